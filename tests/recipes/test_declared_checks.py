"""What a settings field declares (its choices, or a Rule such as POSITIVE) is what every path checks: each declared
field of every benchmark's settings, the allocate command's and every recipe section is refused with a bad value
through that class's own check, the error naming the field; and no hand-written choice check repeats a declaration."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from dropbp.benchmarks.registry import BENCHMARKS
from dropbp.core.errors import ConfigError
from dropbp.recipes.cli.allocate import AllocateSettings
from dropbp.recipes.config.clusters import ClusterProfile
from dropbp.recipes.config.fields import POSITIVE, RATES, SEEDS, Rule, check_declared, option_name
from dropbp.recipes.config.loader import Problems

ROOT = Path(__file__).resolve().parents[2]
BAD = object()  # a value no choice and no rule accepts


def declared(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that declare choices or a checked rule."""
    return [f for f in dataclasses.fields(cls)
            if f.metadata.get("choices") is not None or isinstance(f.metadata.get("allowed"), Rule)]


SETTINGS = [(name, cls) for name, (cls, _, _) in BENCHMARKS.items() if name != "compare"] + [("allocate",
                                                                                                AllocateSettings)]
CASES = [(name, cls, field.name) for name, cls in SETTINGS for field in declared(cls)]


def test_the_benchmarks_declare_their_checks():
    assert len(CASES) >= 60  # every positive count, rate, seed list and choice of the bench commands


@pytest.mark.parametrize("command, cls, field", CASES, ids=[f"{n}.{f}" for n, _, f in CASES])
def test_a_declared_field_with_a_bad_value_is_refused_by_its_settings_naming_it(command, cls, field, tmp_path):
    settings = cls(**({"out": tmp_path} if "out" in {f.name for f in dataclasses.fields(cls)} else {}))
    setattr(settings, field, BAD)
    with pytest.raises(ConfigError) as refused:
        settings.validate()
    assert f"{option_name(field)} " in str(refused.value) or f"{option_name(field)}:" in str(refused.value)


def test_tuple_fields_check_each_item_and_rules_normalise():
    @dataclasses.dataclass
    class Toy:
        kinds: tuple[str, ...] = dataclasses.field(default=("a",), metadata={"choices": ("a", "b")})
        rates: tuple[float, ...] = dataclasses.field(default=(0.5,), metadata={"allowed": RATES})
        seeds: tuple[int, ...] = dataclasses.field(default=(0,), metadata={"allowed": SEEDS})
        steps: int | None = dataclasses.field(default=None, metadata={"allowed": POSITIVE})

    toy, p = Toy(kinds=("a", "c"), rates=[0, 1], seeds=(), steps=None), Problems("")
    check_declared(toy, p)
    assert p.items == ["--kinds must be one of a, b, got 'c'.", "--rates must be a number in [0, 1) (the average fraction of branch FLOPs whose backward is "
                       "dropped, e.g. 0.5, 0.75 or 0.875), got 1.",
                       "--seeds needs at least one seed."]  # steps: None is allowed where the field is optional
    toy, p = Toy(rates=[0, 0.5]), Problems("")
    check_declared(toy, p)
    assert not p.items and toy.rates == (0.0, 0.5)


def test_recipe_sections_and_cluster_profiles_check_their_declared_choices(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: {name: tiny, method: nope}\ndata: {train: x.json, format: csv}\n"
                      "optim: {lr_schedule: wavy}\ntrain: {precision: fp8}\ndropbp: {sampler: dice}\n")
    from dropbp.recipes.config.schema import load_recipe

    with pytest.raises(ConfigError) as refused:
        load_recipe(recipe, for_run=False)
    for key in ("model.method", "data.format", "optim.lr_schedule", "train.precision", "dropbp.sampler"):
        assert f"{key} must be one of" in str(refused.value)
    profile, p = ClusterProfile(precisions=("bf16", "fp8"), hpu_mode="quick"), Problems("")
    profile.check(p)
    assert any("precisions must be one of" in item for item in p.items)
    assert any("hpu_mode must be one of" in item for item in p.items)


def _declared_choice_fields() -> set[tuple[str, str]]:
    """(class name, field name) of every field in the source tree that declares ``choices=``."""
    found = set()
    for path in (ROOT / "recipes").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.value, ast.Call) and \
                            any(k.arg == "choices" for k in item.value.keywords):
                        found.add((node.name, item.target.id))
    return found


def test_no_hand_written_choice_check_repeats_a_declaration():
    """``check_choice(name, self.FIELD, ...)`` inside a class whose FIELD declares its choices would check it twice."""
    declared_fields = _declared_choice_fields()
    assert ("DataSection", "format") in declared_fields  # the scan sees declarations
    repeats = []
    for folder in ("recipes", "benchmarks", "backends"):
        for path in (ROOT / folder).rglob("*.py"):
            for cls in (n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)):
                for call in (n for n in ast.walk(cls) if isinstance(n, ast.Call)):
                    args = [a for a in call.args if isinstance(a, ast.Attribute)
                            and isinstance(a.value, ast.Name) and a.value.id == "self"]
                    uses_choice = any(isinstance(a, ast.Name) and a.id == "check_choice" for a in call.args) or (
                        isinstance(call.func, ast.Name) and call.func.id == "check_choice")
                    if uses_choice and any((cls.name, a.attr) in declared_fields for a in args):
                        repeats.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not repeats
