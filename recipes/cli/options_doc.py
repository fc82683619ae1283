"""The reference of every option of every command, with its default and allowed values, made from the settings
dataclasses themselves (``docs/OPTIONS.md``; a test keeps the file in step with the code).

Regenerate with ``python -m dropbp.recipes.cli.options_doc > docs/OPTIONS.md`` (``make docs``)."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from dropbp.backends import DEVICE_CHOICES
from dropbp.recipes.config.gguf_source import NAMED_MODELS
from dropbp.recipes.config.presets import ENV_ALLOW_DOWNLOADS, PRESETS
from dropbp.recipes.config.fields import cli_fields, default_of, format_value, option_name

POSITIVE = "integer >= 1"
RATE = "number in [0, 1)"
#: What each option accepts, by field name (a name means the same thing in every command that has it).
ALLOWED: dict[str, str] = {
    "device": f"one of {', '.join(DEVICE_CHOICES)}; the device must be present",
    "seed": "integer in [0, 2**32)",
    "out": "a folder that exists and is writable, or can be created",
    "model": f"a preset ({', '.join(PRESETS)}), `auto` where offered, a named model ({', '.join(NAMED_MODELS)}), a "
             f"local folder with a Hugging Face model, gguf:PATH/TO/FILE.gguf, or hf:org/name (fetched only with "
             f"{ENV_ALLOW_DOWNLOADS}=1)",
    "method": "one of the listed methods",
    "drop_rate": RATE,
    "drop_rates": f"comma-separated, at least one, each a {RATE}",
    "seq_len": f"{POSITIVE}, at most the model's max_position_embeddings (8192 for the presets)",
    "batch_size": POSITIVE,
    "warmup": "integer >= 0",
    "steps": POSITIVE,
    "compile_steps": POSITIVE,
    "checkpointing": "flag",
    "sampler": "one of the listed samplers",
    "pool_size": POSITIVE,
    "compile": "flag",
    "compile_backend": "a torch.compile backend registered in this process (e.g. inductor, aot_eager, eager)",
    "precision": "one of the listed precisions",
    "memory_masks": POSITIVE,
    "lr": "finite number > 0",
    "pretrain_lr": "finite number > 0",
    "budget_gb": "finite number > 0 (CPU only; on a device the budget is its memory)",
    "max_seq_len": POSITIVE,
    "compare_pool_at": f"{RATE}, or none",
    "sensitivity_at": f"{RATE}, or none",
    "sensitivity_allocators": "comma-separated, each paper or optimal",
    "pretrain_steps": POSITIVE,
    "max_step_factor": "finite number >= 1",
    "eval_every": POSITIVE,
    "eval_windows": POSITIVE,
    "corpus_bytes": POSITIVE,
    "allocation": "one of the listed modes",
    "sensitivity": "one of the listed estimators",
    "allocator": "one of the listed allocators",
    "allocate_at": "finite number in [0, 1)",
    "reallocate_every": POSITIVE,
    "cap": "finite number in (0, 1), and at least --drop-rate for the paper and optimal allocators",
    "compare": "exact, or leave out",
    "lora_rank": POSITIVE,
    "contender_rate": RATE,
    "lrs": "comma-separated, at least one, each a finite number > 0",
    "seeds": "comma-separated, at least one, each an integer in [0, 2**32)",
    "contenders": "comma-separated, each one of baseline, dropbp, sensitivity, layerdrop, pld, freeze, schedule, "
                  "adaptive, adaptive-sensitivity, freeze-dropbp; baseline included",
    "regime": "one of the listed regimes",
    "family": "one of the listed task families",
    "schedules": "comma-separated, each one of the listed schedules",
    "epochs": "finite number > 0",
    "warmup_steps": "integer >= 0",
    "pld_gamma_scale": "finite number >= 0",
    "threads": "integer >= 0",
    "equal_time": "flag",
    "time_model": "flag",
    "recipe": "a shipped recipe (dropbp recipes ls) or a recipe file",
    "overrides": "comma-separated key=value, each a recipe field (docs/OPTIONS.md, dropbp train)",
    "loss_margin": "finite number >= 0",
    "match_margin": "finite number >= 0",
    "dirs": "one or more folders, each holding a throughput.json from dropbp bench throughput",
    "answer_tokens": "integer in 1..seq_len-1, or none",
    "data": "corpus, a shipped recipe (dropbp recipes ls) or a recipe file",
    "head_positions": "one of the listed choices",
}


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
            choices = field.metadata.get("choices")
            allowed = ALLOWED[field.name]
            if choices and "listed" in allowed:
                allowed = "one of " + ", ".join(str(c) for c in choices)
            default = default_of(field)
            if field.metadata.get("positional"):
                lines.append(f"| `{(field.metadata.get('metavar') or field.name).upper()}...` (positional) | - | "
                             f"{allowed} | {field.metadata.get('help', '')} |")
                continue
            lines.append(f"| `{option_name(field.name)}` | {'-' if default is None else f'`{format_value(default)}`'} | "
                         f"{allowed} | {field.metadata.get('help', '')} |")
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
    """Options with no entry in :data:`ALLOWED`."""
    return [f"{command} {option_name(f.name)}" for command, cls in commands(parser) for f in cli_fields(cls)
            if f.name not in ALLOWED]


if __name__ == "__main__":
    from dropbp.recipes.cli import build_parser

    print(render(build_parser()), end="")
