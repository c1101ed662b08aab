"""Strict, typed configuration: every module owns one frozen-ish dataclass, and a nested dict (from
`params.yaml`, Sacred, or the command line) becomes one only if every key is known and every value
has the declared type. An unknown or mistyped key is an error that names its full dotted path.

Why hand-rolled: we need exactly three things (unknown-key errors with the path, light type
coercion for YAML's int/float ambiguity, nested dataclasses) and nothing else; no extra dependency.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A params value or key is wrong; the message names the dotted key path.

    `path` is that dotted path when the error knows it (`from_dict` and the params checks set it), so a
    caller can tell where the offending value came from (the params file, a variant, a `--set`)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def describe(value: Any) -> str:
    """A value as an error message shows it: its repr and its type (`5 (int)`, `'abc' (str)`, `null`)."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 80:  # one line: a whole section pasted where a number belongs is cut
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def did_you_mean(name: Any, choices: Any, shown: Any = None) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, else ''; `shown` maps a choice to its text."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    if not close:
        return ""
    return f" (did you mean {(shown or str)(close[0])!r}?)"


def _fmt(path: str, key: str | None = None) -> str:
    if key is None:
        return path or "<root>"
    return f"{path}.{key}" if path else key


def _coerce(value: Any, tp: Any, path: str, default: Any = None) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # `X | None`: X's own error, saying that null is allowed too
            try:
                return _coerce(value, options[0], path, default)
            except ConfigError as exc:
                if exc.path != path:  # an error inside the value (e.g. an unknown nested key)
                    raise
                raise ConfigError(f"{exc} (or null)", path=path) from None
        errors = []
        for arg in options:
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            f"{_fmt(path)}: {describe(value)} matches none of {tp}: {'; '.join(errors)}", path=path
        )
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{_fmt(path)}: {value!r} is not one of {list(choices)}{did_you_mean(value, choices, str)}",
                path=path,
            )
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{_fmt(path)}: expected a mapping of {tp.__name__} settings, got {describe(value)}",
                path=path,
            )
        return from_dict(tp, value, path, default if isinstance(default, tp) else None)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_fmt(path)}: expected a list, got {describe(value)}", path=path)
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(
                    f"{_fmt(path)}: expected {len(args)} items, got {len(value)}: {value!r}", path=path
                )
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_fmt(path)}: expected a mapping, got {describe(value)}", path=path)
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, path): _coerce(v, vt, _fmt(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_fmt(path)}: expected true/false, got {describe(value)}", path=path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{_fmt(path)}: expected an integer, got {describe(value)}", path=path)
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{_fmt(path)}: expected a number, got {describe(value)}", path=path)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{_fmt(path)}: expected a number, got {describe(value)}", path=path)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_fmt(path)}: expected a string, got {describe(value)}", path=path)
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{_fmt(path)}: cannot read {describe(value)} as {tp}", path=path)


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "", default: T | None = None) -> T:
    """Build dataclass `cls` from `data`; unknown keys and wrong types raise ConfigError.

    A key `data` leaves out takes its value from `default` (an instance of `cls`) when one is given, else
    from the class. A nested section given as a mapping changes the keys it names of that field's own
    default (`field(default_factory=lambda: VisionConfig(img_size=64))` keeps img_size=64 under
    `vision: {depth: 2}`), never resets the others to its class's defaults. Any other value (a list, a
    plain dict such as `ModelSpec.overrides`) replaces the default whole."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(
            f"{_fmt(path)}: expected a mapping of {cls.__name__} settings, got {describe(data)}", path=path
        )
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        moved = getattr(cls, "MOVED_KEYS", {}).get(key)  # a key that left the class: say where it went
        hint = f" ({moved})" if moved else did_you_mean(key, fields, lambda name: _fmt(path, name))
        raise ConfigError(
            f"unknown config key {_fmt(path, str(key))!r}{hint}; {cls.__name__} accepts: {sorted(fields)}",
            path=_fmt(path, str(key)),
        )
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            own = getattr(default, name) if default is not None else _dataclass_default(field, hints[name])
            kwargs[name] = _coerce(data[name], hints[name], _fmt(path, name), own)
        elif default is not None:
            kwargs[name] = getattr(default, name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {_fmt(path, name)!r}", path=_fmt(path, name))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{_fmt(path)}: {exc}", path=path) from exc


def _dataclass_default(field: dataclasses.Field, hint: Any) -> Any:
    """The default of `field` when its type is a dataclass (a nested section, `X | None` included) and
    its default an instance of it, else None (other factories are not called)."""
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if not any(dataclasses.is_dataclass(tp) for tp in options):
        return None
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = field.default
    return default if dataclasses.is_dataclass(default) and not isinstance(default, type) else None


def to_dict(cfg: Any) -> Any:
    """Plain nested dict/list copy of a config dataclass (for Sacred, YAML and checkpoints)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: `update` wins; mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """`set_dotted(d, "train.lr", 1e-4)`; intermediate mappings are created."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"{dotted!r} is not a dotted key path (a name between every two dots)", path=dotted)
    node = data
    for depth, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            where = ".".join(keys[: depth + 1])
            raise ConfigError(
                f"{where} is {describe(node)}, not a mapping, so {dotted!r} cannot be set", path=where
            )
    node[keys[-1]] = value
