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


def first_line(err, limit=300):
    """The first line of an error's message, at most `limit` characters (None: all), or its type's name when
    it has none: what an `Error:` line or a failure row quotes of an exception."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


def is_integer(value):
    """An int, and not a bool (a config's `true` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _cut(text, value, limit):
    """`text`, the rendering of `value`, or its first `limit` characters then the value's type and size."""
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        size = f"{len(value):,} characters"
    else:
        items = f"{len(value):,} items, " if isinstance(value, (list, tuple, dict, set)) else ""
        size = f"{items}{len(text):,} characters as text"
    return f"{text[:limit]}… (a {type(value).__name__} of {size})"


def bounded(value, limit=80):
    """repr(value) for a one-line message, cut to its first `limit` characters and then naming its type
    and size: a 10,000-character caption or a 1,000,000-item list never floods the line."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4,300-digit limit for str()
        return f"an int of {value.bit_length():,} bits"
    return _cut(text, value, limit)


def describe_value(value, limit=80):
    """A config value as it reads in JSON, with its type, for messages: "64" (str), 3.5 (float), null;
    a longer one cut as `bounded` cuts it."""
    if value is None:
        return "null"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return bounded(value, limit)
    return f"{text} ({type(value).__name__})" if len(text) <= limit else _cut(text, value, limit)
