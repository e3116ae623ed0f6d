# Start a throwaway PostgreSQL on loopback and export TEST_POSTGRES_URL (sourced by .ci/run).
pgver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
pgbin=/usr/lib/postgresql/$pgver/bin
pgdata=$(mktemp -d /tmp/pgdata.XXXXXX)
chown postgres "$pgdata"
su postgres -c "$pgbin/initdb -D $pgdata -A trust -U postgres" >/dev/null
su postgres -c "$pgbin/pg_ctl -D $pgdata -o '-k /tmp -h 127.0.0.1 -p 55432' -l $pgdata/log -w start" >/dev/null
su postgres -c "$pgbin/createdb -h 127.0.0.1 -p 55432 -U postgres optuna_test"
export TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:55432/optuna_test
