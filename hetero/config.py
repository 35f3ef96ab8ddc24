"""Typed configuration: build keyword-only dataclasses from YAML/JSON dicts with errors that name the key path.

Every component of hetero owns a config dataclass (keyword-only, one docstring line per field) and validates its
values in ``__post_init__`` by raising :class:`ConfigError`. :func:`build` turns a parsed YAML mapping into such a
dataclass, checking unknown keys, missing keys and types on the way, and prefixes every error with the path of the
offending key, e.g. ``nodes[2].devices.count: must be > 0``.

    from hetero.config import build, load_yaml
    cfg = build(MyConfig, load_yaml("my.yaml"), path="")
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is wrong; ``path`` names the key (``nodes[2].devices.count``), may be empty."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` put in front of its path."""
        if not prefix:
            return self
        if not self.path:
            return ConfigError(prefix, self.message)
        sep = "" if self.path.startswith("[") else "."
        return ConfigError(f"{prefix}{sep}{self.path}", self.message)


def join(path: str, key: str | int) -> str:
    """``join("nodes", 2) == "nodes[2]"``, ``join("nodes[2]", "count") == "nodes[2].count"``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check(cond: bool, path: str, message: str) -> None:
    """Raise ``ConfigError(path, message)`` unless ``cond``."""
    if not cond:
        raise ConfigError(path, message)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file, turning a missing file or a syntax error into a ConfigError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), "file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(str(p), f"malformed YAML{where}: {problem}") from None


def load_json(path: str | Path) -> Any:
    """Parse a JSON file, turning a missing file or a syntax error into a ConfigError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), "file not found")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(str(p), f"malformed JSON (line {e.lineno}): {e.msg}") from None


def under_file(path: str | Path, error: ConfigError) -> ConfigError:
    """``error`` re-raised with the file name in front of its key path (``plan.yaml: stages[1].ranks: ...``)."""
    return ConfigError(f"{path}: {error.path}" if error.path else str(path), error.message)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the type annotation ``tp`` and convert nested dicts to dataclasses."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(a, value, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        check(value in allowed, path, f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return value
    if origin in (list, tuple, typing.Sequence):
        check(isinstance(value, (list, tuple)), path, f"expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            check(len(value) == len(args), path, f"expected {len(args)} items, got {len(value)}")
            return tuple(convert(a, v, join(path, i)) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [convert(item, v, join(path, i)) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping):
        check(isinstance(value, Mapping), path, f"expected a mapping, got {type(value).__name__}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {convert(kt, k, path): convert(vt, v, join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, path)
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), path,
              f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), path,
              f"expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        check(isinstance(value, bool), path, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        check(isinstance(value, str), path, f"expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type):
        check(isinstance(value, tp), path, f"expected {tp.__name__}, got {type(value).__name__}")
    return value


def build(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from mapping ``data``: unknown keys, missing keys, wrong types and the
    class's own ``__post_init__`` checks all raise :class:`ConfigError` with the key path."""
    check(isinstance(data, Mapping), path, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(join(path, str(unknown[0])), f"unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(join(path, name), "missing required key")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(path) from None


def to_dict(obj: Any) -> Any:
    """Plain-data view of a (nested) dataclass for YAML/JSON: tuples become lists, fields in declaration order."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
