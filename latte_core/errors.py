"""The two kinds of error every stage raises on purpose, so the `latte` command can treat them alike.

UserError: something the user gave is wrong (a file, a folder, a config key, an option value); the
message names it. The command prints one `Error: <message>` line and exits 2, nothing is written.
JobAborted: a job stopped on a fault of its surroundings (a full disk, ...); every unit committed
before it stays valid and a re-run resumes. One `Error:` line, exit 1.
Anything else is a bug: one `Error:` line too, exit 1, and `latte -v` shows the traceback.
"""
import json


class UserError(ValueError):
    """A bad input, key or value; the message names it."""


class JobAborted(RuntimeError):
    """A job stopped by its environment; committed units stay valid."""


class DiskFull(JobAborted):
    """No space left (or over quota) while writing; committed units stay valid."""


def is_integer(value):
    """An int, and not a bool (a config's `true` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def shorten(text, limit=80):
    """`text` for a one-line message: its repr, cut to the first `limit` characters and then saying
    how long it is, so a 10,000-character caption or value never floods the line."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def describe_value(value):
    """A config value as it reads in JSON, with its type, for messages: "64" (str), 3.5 (float), null."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return "null" if value is None else f"{text} ({type(value).__name__})"
