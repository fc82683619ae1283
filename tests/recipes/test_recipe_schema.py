"""Recipes: every shipped one validates; bad ones are refused with one message listing every problem, exit code 2
and no output folder; YAML is read safely; random YAML gives a clean error or a valid recipe, never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropbp.core.errors import ConfigError
from dropbp.recipes.cli import main
from dropbp.recipes.config.clusters import load_cluster
from dropbp.recipes.config.loader import parse_yaml
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "recipes" / "task_data"


def test_every_shipped_yaml_validates_and_says_how_to_run_it():
    files = sorted((ROOT / "recipes").rglob("*.yaml"))
    clusters = [path for path in files if path.parent.name == "clusters"]
    for path in clusters:  # cluster profiles: the hardware side of a recipe
        assert load_cluster(path.stem).name == path.stem
        assert f"--to {path.stem}" in path.read_text().splitlines()[0]
    files = [path for path in files if path not in clusters]
    assert len(files) >= 13 and set(shipped().values()) == set(files)
    for path in files:
        recipe = load_recipe(path, for_run=False)
        assert isinstance(recipe, Recipe)
        first = path.read_text().splitlines()[0]
        name = path.relative_to(ROOT / "recipes" / "configs").with_suffix("").as_posix()
        assert first.startswith("#") and f"dropbp train {name}" in first, (path, first)


def test_paper_recipes_cover_the_paper():
    names = set(shipped())
    for size in ("7b", "13b"):
        for method in ("lora", "full"):
            for data in ("alpaca", "dolly"):
                assert f"paper/llama2-{size}-{method}-{data}" in names
    assert {"paper/llama2-70b-qlora-alpaca", "paper/llama3-8b-lora-oasst1", "tiny-tasks"} <= names
    qlora = load_recipe(shipped()["paper/llama2-70b-qlora-alpaca"], for_run=False)
    assert qlora.model.method == "qlora" and qlora.optim.lr == 1e-4 and qlora.train.grad_accum == 64


def bad_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(f"""
name: bad
model: {{name: tiny, method: qlora, config: {{vocab_size: 128}}, colour: blue}}
data: {{train: {tmp_path / 'missing.jsonl'}, validation: {TASKS / 'validation.jsonl'}}}
optim: {{lr: -1.0e-4}}
dropbp: {{drop_rate: 1.2}}
""")
    return path


def test_every_problem_is_listed_at_once(tmp_path, capsys):
    code = main(["train", str(bad_recipe(tmp_path)), "--device", "hpu", "--output-dir", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    for needle in ("unknown key model.colour", "dropbp.drop_rate must be a number in [0, 1)",
                   "optim.lr must be a finite number in (0, inf)", "data.train: no such file",
                   "qlora needs bitsandbytes 4-bit kernels, which Intel Gaudi does not have",
                   "byte-level (256 ids), but the model's vocabulary has 128"):
        assert needle in err, needle
    assert "has 6 problems" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,needle", [
    ("model.colour=blue", "unknown key model.colour"),
    ("dropbp.drop_rate=1.2", "dropbp.drop_rate must be a number in [0, 1)"),
    ("dropbp.schedule.kind=exponential", "dropbp.schedule.kind must be one of constant, linear, cosine, steps"),
    ("dropbp.schedule.levels=1", "dropbp.schedule.levels must be an integer >= 2"),
    ("dropbp.schedule.kind=adaptive", "dropbp.schedule.kind 'adaptive' was removed"),
    ("dropbp.schedule.window=5", "unknown key dropbp.schedule.window"),
    ("optim.lr=-1e-4", "optim.lr must be a finite number in (0, inf)"),
    ("data.train=no/such/file.jsonl", "data.train: no such file"),
    ("model.config.vocab_size=100", "but the model's vocabulary has 100"),
    ("train.micro_batch_size=two", "train.micro_batch_size must be an integer, got 'two'"),
    ("optim=3", "optim must be a mapping of OptimSection keys"),
    ("no_such_section.x=1", "unknown key no_such_section"),
    ("optim.lr", "must look like key=value"),
])
def test_each_bad_value_exits_2_with_nothing_written(tmp_path, capsys, override, needle):
    out = tmp_path / "run"
    assert main(["train", "tiny-tasks", override, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not out.exists()


def test_qlora_on_gaudi_is_refused_before_anything_runs(tmp_path, capsys):
    assert main(["train", "tiny-tasks-qlora", "--device", "hpu", "--output-dir", str(tmp_path / "run")]) == 2
    assert "Intel Gaudi does not have" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_python_object_tags_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    assert main(["train", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "refused YAML tag" in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_overrides_are_typed_like_the_file():
    recipe = load_recipe(shipped()["tiny-tasks"], ["optim.lr=1e-4", "train.steps=7", "data.packing=true",
                                                   "model.lora_targets=[q_proj,v_proj]"])
    assert recipe.optim.lr == 1e-4 and recipe.train.steps == 7 and recipe.data.packing is True
    assert recipe.model.lora_targets == ("q_proj", "v_proj")


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                 lambda children: st.one_of(st.lists(children, max_size=4),
                                            st.dictionaries(st.sampled_from(
                                                ["name", "model", "data", "optim", "train", "dropbp", "device",
                                                 "lr", "method", "steps", "drop_rate", "x", "seq_len"]),
                                                children, max_size=5)),
                 max_leaves=20).map(lambda value: __import__("yaml").safe_dump(value)),
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
@given(text=YAML_TEXT)
def test_random_yaml_gives_a_clean_error_or_a_valid_recipe(text):
    try:
        recipe = load_recipe(parse_yaml(text), for_run=False)
    except ConfigError:
        return
    assert isinstance(recipe, Recipe)
