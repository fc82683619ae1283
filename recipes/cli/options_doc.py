"""The reference of every option of every command, with its default and allowed values, made from the settings
dataclasses themselves (``docs/OPTIONS.md``; a test keeps the file in step with the code).

Regenerate with ``python -m dropbp.recipes.cli.options_doc > docs/OPTIONS.md`` (``make docs``)."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from dropbp.recipes.config.fields import cli_fields, default_of, format_value, option_name


def allowed(field: dataclasses.Field) -> str | None:
    """What a field accepts, as the reference shows it: its own ``allowed`` words, else its choices, else "flag" for
    a boolean flag; None when the field declares nothing (a test keeps that list empty)."""
    if field.metadata.get("allowed"):
        return str(field.metadata["allowed"])
    if field.metadata.get("choices"):
        return "one of " + ", ".join(str(c) for c in field.metadata["choices"])
    if field.type in (bool, "bool"):
        return "flag"
    return None


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, type]]:
    """``(command line, settings class)`` of every settings-driven subcommand under ``parser``."""
    found: list[tuple[str, type]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                settings_class = sub.get_default("settings_class")
                if settings_class is not None:
                    found.append((" ".join(("dropbp", *prefix, name)), settings_class))
                found.extend(commands(sub, (*prefix, name)))
    return found


def render(parser: argparse.ArgumentParser) -> str:
    """The Markdown reference: one table per command."""
    lines = ["# Command-line options", "",
             "Every option of every `dropbp` command, its default and the values it accepts. A value outside them "
             "stops the command before any work, with exit code 2 and one paragraph naming the option. The same "
             "checks apply to the settings objects when a benchmark or command is called from Python.",
             "", "Generated from the settings dataclasses by `make docs`; do not edit by hand.", ""]
    for command, settings_class in commands(parser):
        lines += [f"## `{command}`", "", "| option | default | allowed | meaning |", "|---|---|---|---|"]
        for field in cli_fields(settings_class):
            default = default_of(field)
            if field.metadata.get("positional"):
                lines.append(f"| `{(field.metadata.get('metavar') or field.name).upper()}...` (positional) | - | "
                             f"{allowed(field)} | {field.metadata.get('help', '')} |")
                continue
            lines.append(f"| `{option_name(field.name)}` | {'-' if default is None else f'`{format_value(default)}`'} | "
                         f"{allowed(field)} | {field.metadata.get('help', '')} |")
        lines.append("")
    return "\n".join(lines) + "\n" + render_recipe()


def render_recipe() -> str:
    """The Markdown reference of every recipe field (``dropbp train RECIPE key=value ...``)."""
    from dropbp.recipes.config.loader import type_name
    from dropbp.recipes.config.schema import Recipe

    lines = ["## Recipe fields (`dropbp train RECIPE [key=value ...]`)", "",
             "A recipe is a YAML file of these sections; every key can be overridden on the command line with its "
             "dotted path, e.g. `optim.lr=1e-4`. All problems of a recipe are reported together, before any work.",
             "", "| key | default | allowed | meaning |", "|---|---|---|---|"]

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if not field.metadata.get("cli", True):
                continue
            if dataclasses.is_dataclass(hints[field.name]):
                walk(hints[field.name], f"{prefix}{field.name}.")
                continue
            choices = field.metadata.get("choices")
            allowed = "one of " + ", ".join(map(str, choices)) if choices else type_name(hints[field.name])
            default = default_of(field)
            shown = "-" if default is None else f"`{format_value(default) if default != '' else chr(34) * 2}`"
            lines.append(f"| `{prefix}{field.name}` | {shown} | {allowed} | {field.metadata.get('help', '')} |")

    walk(Recipe, "")
    return "\n".join(lines) + "\n"


def missing(parser: argparse.ArgumentParser) -> list[str]:
    """Options whose field says nothing of what it accepts."""
    return [f"{command} {option_name(f.name)}" for command, cls in commands(parser) for f in cli_fields(cls)
            if allowed(f) is None]


if __name__ == "__main__":
    from dropbp.recipes.cli import build_parser

    print(render(build_parser()), end="")
