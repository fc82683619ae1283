"""Typed settings dataclasses whose fields carry their own help text, and the command-line options made from them.

A field is declared once, with :func:`setting` (default, help, allowed values); :func:`add_options` turns every
field into ``--field-name`` with that default and help, and :func:`from_args` builds the dataclass back from the
parsed arguments. So a default lives in one place, and the same object is what Python callers pass directly. What a
field allows (its ``choices``, or a :class:`Rule` such as :data:`POSITIVE`) is checked from that declaration on every
path, command line, YAML file or Python, by :func:`check_declared`; a settings class's own ``check`` keeps only the
rules that join several fields or need the machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shutil
import tempfile
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dropbp.core.allocation import validate_drop_rate
from dropbp.core.checks import check_int, check_seed
from dropbp.core.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a field allows: the words the option reference shows, and the check :func:`check_declared` runs on every
    path. ``test(name, value)`` raises :class:`ConfigError` naming ``name``, or returns the value (normalised where
    it may be, e.g. a list of rates as a tuple of floats)."""

    words: str
    test: Callable[[str, Any], Any]

    def __str__(self) -> str:
        return self.words

    def described(self, words: str) -> "Rule":
        """The same check, shown with other words (e.g. with a bound the check cannot know)."""
        return dataclasses.replace(self, words=words)


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within the bounds (open or closed at each end); NaN and infinity are refused."""
    interval = (("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}") + ", "
                + ("inf" if high is None else f"{high:g}") + (")" if high_open or high is None else "]"))
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ConfigError(f"{name} must be a finite number in {interval}, got {value!r}.")
    return float(value)


def _listed(name: str, values: Any, each: str) -> None:
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{name} must be a list (comma-separated on the command line), each {each}; "
                          f"got {values!r}.")


def check_drop_rates(rates: Any, name: str = "--drop-rates") -> tuple[float, ...]:
    """At least one rate, each in [0, 1); returned as a tuple of floats."""
    _listed(name, rates, "a number in [0, 1)")
    if not rates:
        raise ConfigError(f"{name} needs at least one rate in [0, 1), e.g. 0.5,0.75,0.875.")
    return tuple(validate_drop_rate(r, name) for r in rates)


def check_seeds(name: str, seeds: Any) -> tuple[int, ...]:
    """At least one seed, each an integer in [0, 2**32)."""
    _listed(name, seeds, "an integer in [0, 2**32)")
    if not seeds:
        raise ConfigError(f"{name} needs at least one seed.")
    return tuple(check_seed(seed, name) for seed in seeds)


def check_positive_numbers(name: str, values: Any, *, at_least_one: bool = True) -> tuple[float, ...]:
    """Numbers (at least one unless ``at_least_one`` is false), each finite and > 0; returned as a tuple of
    floats."""
    _listed(name, values, "a finite number > 0")
    if at_least_one and not values:
        raise ConfigError(f"{name} needs at least one finite number > 0.")
    return tuple(check_number(name, value, low=0, low_open=True) for value in values)


#: What the commonest kinds of value allow: checked from the declaration, shown in the option reference.
POSITIVE = Rule("integer >= 1", lambda name, value: check_int(name, value, 1))
NON_NEGATIVE = Rule("integer >= 0", lambda name, value: check_int(name, value, 0))
RATE = Rule("number in [0, 1)", lambda name, value: validate_drop_rate(value, name))
RATES = Rule(f"comma-separated, at least one, each a {RATE}", lambda name, value: check_drop_rates(value, name))
POSITIVE_NUMBER = Rule("finite number > 0", lambda name, value: check_number(name, value, low=0, low_open=True))
POSITIVE_NUMBERS = Rule("comma-separated, at least one, each a finite number > 0", check_positive_numbers)
SOME_POSITIVE_NUMBERS = Rule("comma-separated, each a finite number > 0, or none",
                             lambda name, values: check_positive_numbers(name, values, at_least_one=False))
NON_NEGATIVE_NUMBER = Rule("finite number >= 0", lambda name, value: check_number(name, value, low=0))
SEED = Rule("integer in [0, 2**32)", lambda name, value: check_seed(value, name))
SEEDS = Rule(f"comma-separated, at least one, each an {SEED}", check_seeds)
FOLDER = "a folder that exists and is writable, or can be created"
COMPILE_BACKEND = "a torch.compile backend registered in this process (e.g. inductor, aot_eager, eager)"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, choices: Sequence[Any] | None = None,
            allowed: Rule | str | None = None, cli: bool = True, default_factory: Callable[[], Any] | None = None,
            metavar: str | None = None, positional: bool = False) -> Any:
    """A dataclass field with its help text and allowed values: ``choices`` (of each item, for a tuple), or
    ``allowed``: a :class:`Rule` (checked and shown) or the words ``docs/OPTIONS.md`` shows where the check needs more
    than the value (a flag or a field with choices needs none); choices and a rule are checked by
    :func:`check_declared`; ``cli=False`` keeps it off the command line; ``positional=True`` makes a tuple field
    the command's positional arguments (one or more)."""
    metadata = {"help": help, "choices": None if choices is None else tuple(choices), "allowed": allowed, "cli": cli,
                "metavar": metavar, "positional": positional}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


#: How errors call a settings field: its flag on the command line, its dotted key in a YAML file.
Naming = Callable[[str], str]


def option_name(name: str) -> str:
    """``drop_rates`` -> ``--drop-rates``: the flag (and the name command-line errors use) of a settings field."""
    return "--" + name.replace("_", "-")


def yaml_key(section: str) -> Naming:
    """The naming of a YAML section's fields: ``drop_rates`` -> ``memory.drop_rates`` for ``section='memory'``."""
    return lambda name: f"{section}.{name}"


def _comma_list(item: Callable[[str], Any], what: str) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None

    parse.__name__ = f"list of {what}"
    return parse


def strip_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; any other annotation -> ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _or_none(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")
    return parse_optional


def _parser_for(annotation: Any) -> Callable[[str], Any] | None:
    bare, optional = strip_optional(annotation)
    parse = _bare_parser(bare)
    if parse is None or not optional or bare in (str, Path):
        return parse
    return _or_none(parse)  # an optional number: "none" on the command line means None


def _bare_parser(annotation: Any) -> Callable[[str], Any] | None:
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return _comma_list(item, {float: "numbers", int: "integers", str: "names"}[item])
    if annotation in (int, float, str, Path):
        return annotation
    return None


def default_of(field: dataclasses.Field) -> Any:
    """The default of a dataclass field (calling its factory if it has one)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def format_value(value: Any) -> str:
    """A default as the command line spells it (tuples comma-separated)."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that appear on the command line."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def add_options(parser: argparse.ArgumentParser, cls: type, *, defaults: dict[str, Any] | None = None) -> None:
    """Add ``--field-name`` for every command-line field of the dataclass ``cls``. ``defaults`` overrides a field's
    default for this parser only (e.g. a subcommand with a different method)."""
    hints = typing.get_type_hints(cls)
    for field in cli_fields(cls):
        default = (defaults or {}).get(field.name, default_of(field))
        help_text = field.metadata.get("help", "")
        flag = option_name(field.name)
        if field.metadata.get("positional"):
            item = typing.get_args(hints[field.name])[0]
            parser.add_argument(field.name, nargs="+", type=item, metavar=field.metadata.get("metavar"),
                                help=help_text)
            continue
        if hints[field.name] is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        parse = _parser_for(hints[field.name])
        if parse is None:
            raise TypeError(f"{cls.__name__}.{field.name}: no command-line parser for {hints[field.name]!r}")
        shown = "" if default is None else f" (default: {format_value(default)})"
        listed = typing.get_origin(strip_optional(hints[field.name])[0]) is tuple  # choices are then per item
        parser.add_argument(flag, dest=field.name, type=parse, default=default,
                            choices=None if listed else field.metadata.get("choices"),
                            metavar=field.metadata.get("metavar"),
                            help=f"{help_text}{shown}")


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The dataclass ``cls`` built from parsed arguments (fields kept off the command line take their defaults)."""
    return cls(**{f.name: tuple(getattr(args, f.name)) if f.metadata.get("positional") else getattr(args, f.name)
                  for f in cli_fields(cls)})


def add_command(subparsers: argparse._SubParsersAction, name: str, settings_class: type[T],
                run: Callable[[T, argparse.Namespace], Any], *, help: str, description: str,
                epilog: str) -> argparse.ArgumentParser:
    """A subcommand whose options are the fields of ``settings_class``; it calls ``run(settings, args)``."""
    parser = subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser, settings_class)
    parser.set_defaults(run=lambda args: run(from_args(settings_class, args), args), settings_class=settings_class)
    return parser


# -- checks (each error names the option and what is allowed) ------------------------------------------------------
def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}.")


def _optional(field: dataclasses.Field) -> bool:
    return field.default is None or "None" in str(field.type)


def check_declared(settings: Any, p: Any, naming: Naming = option_name) -> None:
    """Record in ``p`` (a :class:`~dropbp.recipes.config.loader.Problems`) every field of the dataclass ``settings``
    that breaks what it declares: its ``choices`` (each item of a tuple) or its :class:`Rule` (whose normalised value
    is kept). ``None`` passes where the field is optional. ``naming`` says how errors call a field."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is None and _optional(field):
            continue
        choices, rule = field.metadata.get("choices"), field.metadata.get("allowed")
        if str(field.type).startswith("tuple") and not isinstance(value, (list, tuple)):
            p.add(f"{naming(field.name)} must be a list (comma-separated on the command line), got {value!r}.")
            continue
        if choices is not None:
            for item in value if isinstance(value, tuple) else (value,):
                p.check(check_choice, naming(field.name), item, choices)
        if isinstance(rule, Rule):
            checked = p.check(rule.test, naming(field.name), value)
            if checked is not None:
                setattr(settings, field.name, checked)


#: Upper bound of sizes no recipe needs more of (a bigger value is a typo, and would exhaust memory or hang).
MAX_SIZE = 1 << 16
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def check_run_name(name: Any) -> None:
    """A run's ``name`` is safe as a folder name: 1 to 100 letters, digits and ``_.+-``, starting with a letter or
    digit."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise ConfigError(f"name must be 1 to 100 letters, digits and _.+- (starting with a letter or digit; it names "
                          f"the output folder), got {str(name)[:40]!r}.")


def check_output_dir(name: str, path: Any) -> None:
    """``path`` can hold results: an existing writable folder, or one that can be created. Checked by creating (and
    removing) a probe folder in the nearest existing parent, so nothing is left behind."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} {path} exists and is not a folder; give a folder for the results.")
    parent = path
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(str(parent))
        shutil.rmtree(tempfile.mkdtemp(prefix=".dropbp-probe-", dir=parent))
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"{name} {path} cannot be written: {parent} does not accept new folders ({reason}). "
                          "Choose a folder you can write to.") from None
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{name} {path} cannot be written ({parent} is not writable); choose another folder.")
