"""Stage configuration from YAML: known keys only, checked types, the seed's spellings accepted."""
from latte_core.errors import UserError
from latte_toolkit.train.config import read_yaml_mapping


class ConfigError(UserError):
    pass


def load_stage_config(path, fields, aliases=None):
    """Read a flat YAML mapping (a `data_config:` section is merged in, as the seed's configs nest
    data keys there) and return {field: value} for the keys present.

    fields: {name: type or tuple of types}; aliases: {seed spelling: field name}.
    An unknown key or a value of the wrong type raises ConfigError naming it and the file.
    """
    aliases = aliases or {}
    raw = read_yaml_mapping(path, ConfigError)
    nested = raw.pop("data_config", None) or {}
    if not isinstance(nested, dict):
        raise ConfigError(f"{path}: data_config must be a mapping")
    values = {}
    for key, value in {**raw, **nested}.items():
        name = aliases.get(key, key)
        if name not in fields:
            known = ", ".join(sorted(set(fields) | set(aliases)))
            raise ConfigError(f"{path}: unknown key {key!r}; known keys: {known}")
        types = fields[name] if isinstance(fields[name], tuple) else (fields[name],)
        # bool is an int subclass: accept it only where bool itself is expected
        wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if value is not None and wrong:
            raise ConfigError(f"{path}: {key} must be {'/'.join(t.__name__ for t in types)}, got {value!r}")
        values[name] = value
    return values
