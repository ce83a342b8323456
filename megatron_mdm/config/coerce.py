"""Typed construction of dataclass trees from YAML: reading files, ``section.key=value``
overrides, and checking every value against its field's annotation.

Generic over the dataclasses it is given (``schema.py`` names the actual ones), so the rules are
the annotations themselves: ``int``, ``float``, ``bool``, ``str``, ``list``, unions such as
``list | str | None``, nested dataclasses (sections) and ``Literal[...]`` choices. Every mistake
is a one-line :class:`~megatron_mdm.config.checks.ConfigError` naming the source and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, TypeVar

import yaml

from megatron_mdm.config.checks import ConfigError, short

__all__ = ["apply_override", "build", "check_types", "config_fields", "read_yaml"]

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.2), not as a string (YAML 1.1)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # PyYAML's own message spans several lines with a source excerpt; keep position + problem.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def read_yaml(path: str) -> dict:
    """The mapping of sections in YAML file ``path`` (an empty file: ``{}``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)  # _Loader is a SafeLoader
    except FileNotFoundError:
        raise ConfigError("file not found", source=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", source=path) from None
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(e), source=path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"top level must be a mapping of sections, got {type(data).__name__}", source=path
        )
    return data


# --------------------------------------------------------------------------------------------
# Typed construction
# --------------------------------------------------------------------------------------------

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list"}


def config_fields(cls: Any) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` that are config keys (``metadata={"key": False}``, like
    ``ExperimentConfig.source``, marks one that is not)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("key", True)]


def _type_name(tp: Any) -> str:
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _members(tp: Any) -> tuple[list[Any], bool]:
    """The member types of union ``tp`` other than None, and whether None is one of them
    (``[tp], False`` for a type that is not a union)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args, len(args) < len(typing.get_args(tp))
    return [tp], False


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    members, optional = _members(tp)
    return members[0], optional


def _is_instance(value: Any, base: type) -> bool:
    """``isinstance``, except that a bool is not an int (YAML ``true`` is not a layer count)."""
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)


def _coerce_literal(value: Any, tp: Any, optional: bool, key: str, where: str) -> Any:
    """A ``Literal[...]`` field: first the type of its choices, then the choice itself."""
    options = typing.get_args(tp)
    kinds = sorted({type(o) for o in options}, key=lambda k: k.__name__)
    if not any(_is_instance(value, kind) for kind in kinds):
        expected = " or ".join(_type_name(k) for k in kinds) + (" or null" if optional else "")
        raise ConfigError(f"expected {expected}, got {short(value)}", source=where, key=key)
    if not any(value == o and type(value) is type(o) for o in options):
        raise ConfigError(
            f"must be one of {', '.join(str(o) for o in options)}, got {short(value)}",
            source=where,
            key=key,
        )
    return value


def _coerce_union(value: Any, tp: Any, key: str, where: str, lenient: bool) -> Any:
    """E.g. ``list | str | None``: the first member type that takes ``value``."""
    members, optional = _members(tp)
    for member in members:
        try:
            return _coerce(value, member, key, where, lenient)
        except ConfigError:
            pass
    names = " or ".join(_type_name(m) for m in members)
    raise ConfigError(
        f"expected {names}{' or null' if optional else ''}, got {short(value)}",
        source=where,
        key=key,
    )


def _coerce_section(value: Any, cls: type, key: str, where: str) -> Any:
    """A nested section: an instance of ``cls`` as it is, a mapping (or null: all defaults)
    built into one."""
    if isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping, got {short(value)}", source=where, key=key)
    return build(cls, value, key, where)


def _coerce(value: Any, tp: Any, key: str, where: str, lenient: bool = True) -> Any:
    """Check ``value`` against annotation ``tp``; return it normalized (int -> float).

    ``lenient`` also takes strings that parse as floats for float fields, for YAML written
    by tools that follow YAML 1.1, where ``1e-4`` is a string.
    """
    members, optional = _members(tp)
    if value is None and optional:
        return None
    if len(members) > 1:
        return _coerce_union(value, tp, key, where, lenient)
    base = members[0]
    if typing.get_origin(base) is typing.Literal:
        return _coerce_literal(value, base, optional, key, where)
    if isinstance(base, type) and dataclasses.is_dataclass(base):
        return _coerce_section(value, base, key, where)
    ok = False
    if base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value, ok = float(value), True
        elif lenient and isinstance(value, str):
            try:
                value, ok = float(value), True
            except ValueError:
                pass
    else:
        ok = _is_instance(value, base)
    if not ok:
        expected = _type_name(base) + (" or null" if optional else "")
        raise ConfigError(f"expected {expected}, got {short(value)}", source=where, key=key)
    return value


def _unknown_key(cls: Any, name: str, prefix: str, where: str) -> ConfigError:
    dotted = f"{prefix}.{name}" if prefix else str(name)
    close = difflib.get_close_matches(str(name), [f.name for f in config_fields(cls)], n=1)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
    return ConfigError(f"unknown key {dotted}{hint}", source=where)


def build(cls: type[T], data: dict, prefix: str, where: str) -> T:
    """``cls(**data)`` with every value checked against its annotation; nested mappings become
    nested sections. ``prefix`` is the dotted key of ``cls`` ("" at the top), ``where`` the
    source named in errors."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in config_fields(cls)}
    kwargs = {}
    for name, value in data.items():
        if name not in known:
            raise _unknown_key(cls, name, prefix, where)
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, where)
    return cls(**kwargs)


def apply_override(root: Any, override: str, source: str) -> None:
    """Set ``section.key=value`` on the dataclass tree ``root``; the value is read as YAML and
    checked like a value from the file. Errors name ``source (override ...)``."""
    where = f"{source} (override {override})"
    dotted, sep, raw = override.partition("=")
    dotted = dotted.strip()
    if not sep or not dotted:
        raise ConfigError("expected section.key=value", source=where)
    try:
        value = yaml.load(raw, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError:
        value = raw  # e.g. a path with odd characters; the type check decides
    parts = dotted.split(".")
    obj = root
    for i, name in enumerate(parts):
        prefix = ".".join(parts[:i])
        if name not in {f.name for f in config_fields(obj)}:
            raise _unknown_key(type(obj), name, prefix, where)
        tp = typing.get_type_hints(type(obj))[name]
        is_section = dataclasses.is_dataclass(_unwrap_optional(tp)[0])
        if i == len(parts) - 1:
            if is_section:
                raise ConfigError(
                    f"{dotted} is a section; set {dotted}.<key>=value instead", source=where
                )
            setattr(obj, name, _coerce(value, tp, dotted, where))
        elif not is_section:
            raise _unknown_key(type(obj), ".".join(parts[i:]), prefix, where)
        else:
            obj = getattr(obj, name)


def check_types(obj: Any, prefix: str, where: str) -> None:
    """Check every field of the dataclass tree ``obj`` against its annotation, strictly (no
    float from a string): a config built in code skipped :func:`build`, e.g. ``lr="1e-4"``."""
    hints = typing.get_type_hints(type(obj))
    for f in config_fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value, key, where)
        else:
            _coerce(value, hints[f.name], key, where, lenient=False)
