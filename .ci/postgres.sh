# Start a throwaway PostgreSQL on loopback and export TEST_POSTGRES_URL (sourced by .ci/run).
pgver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
pgbin=/usr/lib/postgresql/$pgver/bin
pgdata=$(mktemp -d /tmp/pgdata.XXXXXX)
# A free loopback port, so a cluster left over from an earlier run cannot collide with this one.
pgport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chown postgres "$pgdata"
su postgres -c "$pgbin/initdb -D $pgdata -A trust -U postgres" >/dev/null
su postgres -c "$pgbin/pg_ctl -D $pgdata -o '-k /tmp -h 127.0.0.1 -p $pgport' -l $pgdata/log -w start" >/dev/null
su postgres -c "$pgbin/createdb -h 127.0.0.1 -p $pgport -U postgres optuna_test"
export TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$pgport/optuna_test
