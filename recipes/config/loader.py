"""Typed, safe loading of YAML documents into settings dataclasses.

YAML is read with a safe loader only (a tag that would construct a Python object is refused as bad input), which
also refuses duplicate keys, and a document that expands (through aliases) to more than :data:`MAX_VALUES` values
or :data:`MAX_DEPTH` levels, a self-referencing alias included.
Unknown keys, wrong types and out-of-range values are collected into one :class:`Problems` report, raised once as a
:class:`ConfigError` that lists every problem with the allowed values. ``key.sub=value`` overrides use the same
path: each value is read as YAML (safely) and then checked like a value from the file.
"""
from __future__ import annotations

import copy
import re
import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dropbp.core.errors import ConfigError
from dropbp.recipes.config.fields import default_of, strip_optional

T = TypeVar("T")
#: The most values (and nesting levels) a recipe may expand to, aliases counted each time they are used.
MAX_VALUES = 100_000
MAX_DEPTH = 64
#: The longest key an error message quotes.
QUOTED_KEY = 40


class _Duplicate(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {quote_key(key)} at line {line}")


class RecipeLoader(yaml.SafeLoader):
    """The safe loader, refusing a mapping that names one key twice (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges: explicit keys may override them
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue
            if key in seen:
                raise _Duplicate(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


def quote_key(key: Any) -> str:
    """A key as an error message quotes it: as it is when it looks like a key (letters, digits, ``_.-``, at most
    :data:`QUOTED_KEY` characters), else the repr of its key-like start (at most 12 characters, up to the first
    other character) and "...": an error never echoes a line of a file given by mistake, such as the hash field of
    a password file."""
    text = str(key)
    if re.fullmatch(rf"[A-Za-z0-9_.\-]{{1,{QUOTED_KEY}}}", text):
        return text
    start = re.match(r"[A-Za-z0-9_.\-]{0,12}", text).group(0)
    return repr(start) + "..."


def _check_size(data: Any, source: str) -> None:
    """Refuse a document that expands to too many values or levels (an alias bomb, or an alias to itself)."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise ConfigError(f"{source}: expands to more than {MAX_VALUES} values or {MAX_DEPTH} levels (YAML "
                              "aliases that repeat or contain themselves?); recipes are small documents.")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


class Problems:
    """Every problem found in one document, reported together."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, message: str) -> None:
        """Record one problem (one sentence naming the key and what is allowed)."""
        self.items.append(message.rstrip())

    def check(self, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``check``; a :class:`ConfigError` it raises becomes a recorded problem (and None is returned)."""
        try:
            return check(*args, **kwargs)
        except ConfigError as err:
            self.add(str(err))
            return None

    def raise_if_any(self) -> None:
        """One :class:`ConfigError` listing every problem (a single problem is its own message, after the source
        when there is one)."""
        prefix = f"{self.source}: " if self.source else ""
        if len(self.items) == 1:
            raise ConfigError(f"{prefix}{self.items[0]}")
        if self.items:
            listed = "\n".join(f"  - {item}" for item in self.items)
            raise ConfigError(f"{self.source or 'the settings'} {'have' if not self.source else 'has'} "
                              f"{len(self.items)} problems:\n{listed}")


def read_yaml(path: Path | str) -> dict[str, Any]:
    """A YAML mapping from ``path``, read safely; a missing file, bad syntax or a Python-object tag is a
    :class:`ConfigError`."""
    return parse_yaml(read_text(path), str(path))


def read_text(path: Path | str) -> str:
    """The UTF-8 text of ``path``; a missing file or other bytes is a :class:`ConfigError`."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}.") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                          "save it as UTF-8.") from None


def parse_yaml(text: str, source: str = "<text>") -> dict[str, Any]:
    """A YAML mapping from ``text`` (safe loader only)."""
    try:
        data = yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader
    except _Duplicate as err:
        raise ConfigError(f"{source}: {err}; each key may appear once.") from None
    except yaml.constructor.ConstructorError as err:
        raise ConfigError(f"{source}: refused YAML tag {err.problem.split()[-1] if err.problem else ''} at line "
                          f"{err.problem_mark.line + 1 if err.problem_mark else '?'}: recipes are plain data, and "
                          "tags that would construct Python objects are not loaded.") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{source}: not valid YAML{line}: {getattr(err, 'problem', None) or err}.") from None
    except (ValueError, TypeError, RecursionError) as err:  # pathological input the scanner itself rejects
        raise ConfigError(f"{source}: not valid YAML: {type(err).__name__}.") from None
    if data is None:
        return {}
    _check_size(data, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping of keys to values at the top level, got "
                          f"{type(data).__name__}.")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> (["optim", "lr"], "1e-4" read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r} must look like key=value, with a dotted key such as optim.lr=1e-4.")
    return key.strip().split("."), parse_yaml(f"v: {raw}", f"override {text!r}").get("v")


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``key.sub=value`` set (unknown keys are reported later, by :func:`build`)."""
    merged = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return merged


def type_name(annotation: Any) -> str:
    bare, optional = strip_optional(annotation)
    if typing.get_origin(bare) is tuple:
        name = f"a list of {typing.get_args(bare)[0].__name__}"
    elif typing.get_origin(bare) is dict:
        name = "a mapping"
    else:
        name = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                Path: "a path"}.get(bare, getattr(bare, "__name__", str(bare)))
    return name + (" or null" if optional else "")


def _convert(value: Any, annotation: Any, where: str, problems: Problems) -> Any:
    """``value`` as ``annotation`` (numbers written as strings, e.g. YAML's ``1e-4``, are accepted)."""
    bare, optional = strip_optional(annotation)
    if value is None:
        if optional:
            return None
        problems.add(f"{where} must be {type_name(annotation)}, got null.")
        return dataclasses.MISSING
    if dataclasses.is_dataclass(bare):
        if not isinstance(value, dict):
            problems.add(f"{where} must be a mapping of {bare.__name__} keys, got {type(value).__name__}.")
            return dataclasses.MISSING
        return build(bare, value, problems, where)
    origin = typing.get_origin(bare)
    if origin is tuple:
        items = value if isinstance(value, list) else [value] if not isinstance(value, dict) else None
        if items is None:
            problems.add(f"{where} must be {type_name(annotation)}, got a mapping.")
            return dataclasses.MISSING
        item_type = typing.get_args(bare)[0]
        converted = [_convert(v, item_type, f"{where}[{i}]", problems) for i, v in enumerate(items)]
        return dataclasses.MISSING if dataclasses.MISSING in converted else tuple(converted)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            problems.add(f"{where} must be a mapping with string keys, got {type(value).__name__}.")
            return dataclasses.MISSING
        return dict(value)
    if bare is bool:
        if isinstance(value, bool):
            return value
    elif bare is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif bare is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # YAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
    elif bare in (str, Path):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value) if bare is str else Path(str(value))
    else:
        return value
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    problems.add(f"{where} must be {type_name(annotation)}, got {shown}.")
    return dataclasses.MISSING


def build(cls: type[T], data: Mapping[str, Any], problems: Problems, where: str = "") -> T:
    """An instance of the dataclass ``cls`` from ``data``: unknown keys and wrong types go to ``problems``, and a
    field with a problem keeps its default so that checking can go on."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) or f.name in data}
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields:
            problems.add(f"unknown key {quote_key(f'{prefix}{key!s}')}; {where or 'the top level'} allows: "
                         f"{', '.join(sorted(fields))}.")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name in data:
            value = _convert(data[name], hints[name], f"{prefix}{name}", problems)
            values[name] = default_of(field) if value is dataclasses.MISSING else value
    return cls(**values)


def to_plain(value: Any) -> Any:
    """Settings as plain YAML/JSON data (tuples as lists, paths as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def dump_yaml(value: Any) -> str:
    """Settings as YAML text, keys in field order."""
    return yaml.safe_dump(to_plain(value), sort_keys=False, default_flow_style=False)
