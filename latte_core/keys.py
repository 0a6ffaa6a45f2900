"""Typed key tables, the one config mechanism of every `latte` command, and the shared key ranges.

A KeyTable is a stage's keys (name, types, default, doc, choices, range) with the seed's spellings as
aliases: defaults < a YAML file (which may name a `data_config_file` whose `data_config:` section is
merged in, as MindONE's configs do) < command-line values. Unknown keys, wrong types and values out of
range are errors naming the key and where it came from. `describe()` prints a table (`latte <stage>
--keys`). Every stage's table (train/config.py, pipelines/config.py, inference/, tools/, cli/) is made
of these.
"""
import dataclasses
import math
import os

import yaml

from .errors import UserError, bounded


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: finite numbers from `low` to `high` (open ends exclude them)."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value):
        try:
            value = float(value)
        except OverflowError:  # an int past float's range (a YAML integer of 400 digits)
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self):
        def number(x):
            return str(int(x)) if float(x).is_integer() else repr(x)
        if self.high == math.inf:
            return f"{'greater than' if self.low_open else 'at least'} {number(self.low)}"
        if self.low == -math.inf:
            return f"{'less than' if self.high_open else 'at most'} {number(self.high)}"
        return (f"in {'(' if self.low_open else '['}{number(self.low)}, {number(self.high)}"
                f"{')' if self.high_open else ']'}")


AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
UNIT = Range(0, 1)


@dataclasses.dataclass(frozen=True)
class Key:
    """One key. A default that is not of its types (None for a str key) makes the key required."""
    name: str
    types: tuple
    default: object
    doc: str
    choices: tuple = ()
    range: Range = None  # numeric keys: the accepted values (None, where the type allows it, is not checked)
    resume_may_change: bool = False  # a run-control key that `--resume` accepts with another value

    def __post_init__(self):
        if not isinstance(self.types, tuple):  # one type given bare
            object.__setattr__(self, "types", (self.types,))


NUMBER = (int, float)
SEED = Range(0, 2 ** 32 - 1)
OPTIONAL_STR = (str, type(None))


# A config is keys, not data: these bound what one may hold. A YAML alias repeats a value without
# copying it, so a few hundred bytes of aliases stand for billions of values, which anything that walks
# the value (a message, a check, json.dumps) expands; the values are counted with aliases expanded.
YAML_MAX_BYTES = 1 << 20
YAML_MAX_VALUES = 100_000


_TOO_MANY = (f"its aliases expand to more than {YAML_MAX_VALUES:,} values (the limit of a config: an alias "
             f"repeats a value, and a few repeated in turn stand for billions)")


class _Refused(yaml.YAMLError):
    """A document the config reader will not parse (its message says why)."""


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and documents whose aliases expand past YAML_MAX_VALUES."""

    def compose_document(self):
        node = super().compose_document()
        counted, total = {}, 0  # one count over the document: a value aliased under two keys counts twice
        for key_node, value_node in node.value if isinstance(node, yaml.MappingNode) else [(None, node)]:
            where = f"key {bounded(key_node.value)} (line {key_node.start_mark.line + 1}): " if isinstance(
                key_node, yaml.ScalarNode) else ""
            try:
                total += _count_values(value_node, counted, set())
                if total > YAML_MAX_VALUES:
                    raise _Refused(_TOO_MANY)
            except _Refused as err:
                raise _Refused(f"{where}{err}") from None
        return node

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: explicit keys override merged ones
                continue
            key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if first is not None:
                raise _Refused(f"key {bounded(key)} appears twice, on lines {first} and {line} (the last would "
                               f"silently win): keep one")
            lines[key] = line
        return super().construct_mapping(node, deep)


def _count_values(node, counted, open_nodes):
    """The values under `node` with every alias expanded (each node counted once per reference);
    _Refused past YAML_MAX_VALUES or for a value that contains itself."""
    if id(node) in counted:
        return counted[id(node)]
    if id(node) in open_nodes:
        raise _Refused("an alias refers to a value that contains it (a value without end)")
    open_nodes.add(id(node))
    children = node.value if isinstance(node, yaml.SequenceNode) else (
        [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else [])
    total = 1
    for child in children:
        total += _count_values(child, counted, open_nodes)
        if total > YAML_MAX_VALUES:
            raise _Refused(_TOO_MANY)
    open_nodes.discard(id(node))
    counted[id(node)] = total
    return total


def read_yaml_mapping(path, error=UserError):
    """The top-level mapping of a YAML file; `error` names the file when it is unreadable or not one,
    larger than YAML_MAX_BYTES, holds a key twice, or expands past YAML_MAX_VALUES values."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(YAML_MAX_BYTES + 1)
        if len(data) > YAML_MAX_BYTES:
            raise error(f"{path}: {os.path.getsize(path):,} bytes, more than a config may hold "
                        f"({YAML_MAX_BYTES:,}): it is not parsed")
        raw = yaml.load(data.decode("utf-8"), Loader=_ConfigLoader) or {}
    except UnicodeDecodeError:
        raise error(f"{path}: unreadable config (not UTF-8 text)") from None
    except _Refused as err:
        raise error(f"{path}: {err}") from None
    except (OSError, yaml.YAMLError) as err:
        raise error(f"{path}: unreadable config ({err})") from None
    except RecursionError:
        raise error(f"{path}: values nested too deeply to read") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping of keys to values")
    return raw


class KeyTable:
    """A stage's typed keys: defaults < YAML file (a `data_config:` section and a `data_config_file`
    are merged in, as MindONE's configs nest data keys) < overrides. Errors name key and file.

    aliases: {the seed's spelling: key name}; validate(values): checks across keys, run after loading."""

    def __init__(self, keys, aliases, error, validate=None):
        self.keys, self.aliases, self.error, self.validate = keys, aliases, error, validate
        self.by_name = {key.name: key for key in keys}

    def check(self, name, value, source):
        key = self.by_name[name]
        if not isinstance(value, key.types) or (isinstance(value, bool) and bool not in key.types):
            raise self.error(f"{source}: {name} must be {'/'.join(t.__name__ for t in key.types)}, "
                             f"got {bounded(value)}")
        if key.choices and value not in key.choices:
            raise self.error(f"{source}: {name} must be one of {', '.join(map(str, key.choices))}, "
                             f"got {bounded(value)}")
        if isinstance(value, float) and not math.isfinite(value):  # every float key, with a range or without
            raise self.error(f"{source}: {name} must be a finite number, got {bounded(value)}")
        if key.range is not None and value is not None and value not in key.range:
            raise self.error(f"{source}: {name} must be {key.range}, got {bounded(value)}")
        return float(value) if float in key.types and type(value) is int else value

    def _merge(self, values, raw, source):
        nested = raw.pop("data_config", None) or {}
        if not isinstance(nested, dict):
            raise self.error(f"{source}: data_config must be a mapping")
        for key, value in {**raw, **nested}.items():
            name = self.aliases.get(key, key)
            if name not in self.by_name:
                raise self.error(f"{source}: unknown key {bounded(key)}; known keys: "
                                 f"{', '.join(sorted(set(self.by_name) | set(self.aliases)))}")
            values[name] = self.check(name, value, source)

    def load(self, path=None, overrides=None):
        values = {key.name: key.default for key in self.keys}
        if path:
            raw = read_yaml_mapping(path, self.error)
            data_file = raw.get("data_config_file")
            self._merge(values, raw, path)
            if data_file:
                candidates = [data_file, os.path.join(os.path.dirname(os.path.abspath(path)), data_file)]
                found = next((c for c in candidates if os.path.isfile(c)), None)
                if found is None:
                    raise self.error(f"{path}: data_config_file {bounded(data_file)} not found")
                self._merge(values, read_yaml_mapping(found, self.error), found)
                values["data_config_file"] = data_file  # the data file's own keys may not re-point it
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = self.check(name, value, "command line")
        if self.validate is not None:
            self.validate(values)
        return values

    def missing(self, values):
        """The required keys (see Key) that `values` leaves unset, in table order."""
        return [key.name for key in self.keys if not isinstance(values[key.name], key.types)]

    def describe(self):
        """One line per key: name, default (or "required"), meaning, range, the seed's spellings."""
        lines = []
        for key in self.keys:
            default = repr(key.default) if isinstance(key.default, key.types) else "required"
            spellings = sorted(alias for alias, name in self.aliases.items() if name == key.name)
            lines.append(f"{key.name} [{default}]: {key.doc}" + (f" ({key.range})" if key.range else "")
                         + (f"; also spelled {', '.join(spellings)}" if spellings else ""))
        return "\n".join(lines)
