"""The one exception type for mistakes a user can fix: entry scripts print it as one line, exit 2."""


class UserError(Exception):
    """Bad input (path, ratio, layer name, checkpoint, config). The message names the problem and the fix."""


def run_cli(thunk, argv: list[str] | None = None):
    """Run an entry point: a UserError (or a full disk) becomes one line on stderr and exit code 2.

    ``--debug`` in ``argv`` re-raises instead, to show the traceback.
    """
    import errno
    import sys

    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        return thunk()
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        if debug or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        print(f"error: cannot write {exc.filename or 'output'} ({exc.strerror}); free space or fix "
              f"permissions and rerun the same command to resume (finished results are kept)", file=sys.stderr)
    raise SystemExit(2)
