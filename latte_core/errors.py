"""The two kinds of error every stage raises on purpose, so the `latte` command can treat them alike.

UserError: something the user gave is wrong (a file, a folder, a config key, an option value); the
message names it. The command prints one `Error: <message>` line and exits 2, nothing is written.
JobAborted: a job stopped on a fault of its surroundings (a full disk, ...); every unit committed
before it stays valid and a re-run resumes. One `Error:` line, exit 1.
Anything else is a bug: one `Error:` line too, exit 1, and `latte -v` shows the traceback.
"""


class UserError(ValueError):
    """A bad input, key or value; the message names it."""


class JobAborted(RuntimeError):
    """A job stopped by its environment; committed units stay valid."""


class DiskFull(JobAborted):
    """No space left (or over quota) while writing; committed units stay valid."""
