"""``dropbp.advise`` in ``dropbp train``, with the probe replaced (the real one runs in tests/benchmarks): the advice's
keys train and are saved, its files move into the run folder, and what it cannot do is refused with one paragraph,
exit 2, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest

from dropbp.core.errors import ConfigError
from dropbp.recipes.cli import main, train
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import load_recipe

SMALL = ["train.steps=2", "train.eval_every=0", "train.exact_match=0", "train.micro_batch_size=2", "--quiet"]


def fake_advisor(keys, calls):
    def advise(recipe, overrides, device, budget, out, *, progress=True):
        calls.append((recipe, tuple(overrides), device, budget))
        (Path(out) / "advise-tiny-tasks.md").write_text("advice\n")
        return keys
    return lambda: advise


def test_the_advice_trains_and_is_kept_with_the_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "advisor", fake_advisor(["dropbp.drop_rate=0.75", "dropbp.allocation=uniform"], calls))
    out = tmp_path / "run"
    assert main(["train", "tiny-tasks", "--device", "cpu", "dropbp.advise=true", "dropbp.advise_budget=2", *SMALL,
                 "--output-dir", str(out)]) == 0
    assert calls == [("tiny-tasks", ("dropbp.advise=true", "dropbp.advise_budget=2", *SMALL[:-1]), "cpu", 2.0)]
    saved = load_recipe(out / "recipe.yaml", device="cpu")
    assert (saved.dropbp.drop_rate, saved.dropbp.allocation, saved.dropbp.advise) == (0.75, "uniform", False)
    assert (out / "advise" / "advise-tiny-tasks.md").read_text() == "advice\n"


def test_advice_off_trains_with_dropbp_off_whatever_the_recipe_says(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "advisor", fake_advisor([], []))
    out = tmp_path / "run"
    assert load_recipe(shipped()["tiny-tasks"]).dropbp.drop_rate > 0
    assert main(["train", "tiny-tasks", "--device", "cpu", "dropbp.advise=true", *SMALL, "--output-dir", str(out)]) == 0
    assert load_recipe(out / "recipe.yaml", device="cpu").dropbp.drop_rate == 0
    assert "dropbp.advise: training with DropBP off" in capsys.readouterr().err


def test_a_failed_probe_leaves_nothing(tmp_path, monkeypatch, capsys):
    def failing():
        def advise(*args, **kwargs):
            raise ConfigError("--budget 0.01 minutes is too small to measure tiny-tasks here.")
        return advise
    monkeypatch.setattr(train, "advisor", failing)
    out = tmp_path / "run"
    assert main(["train", "tiny-tasks", "--device", "cpu", "dropbp.advise=true", *SMALL, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "too small to measure" in err and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("words, needle", [
    (["dropbp.advise=true", "--resume"], "not on --resume"),
    (["dropbp.advise=true", "dropbp.technique=layerdrop"], "dropbp.advise lets the probe choose"),
    (["dropbp.advise=true", "dropbp.advise_budget=0"], "dropbp.advise_budget"),
])
def test_what_the_advice_cannot_do_is_refused(tmp_path, monkeypatch, capsys, words, needle):
    monkeypatch.setattr(train, "advisor", lambda: pytest.fail("the probe must not run"))
    out = tmp_path / "run"
    assert main(["train", "tiny-tasks", "--device", "cpu", *words, *SMALL, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and not out.exists()


def test_several_processes_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "advisor", lambda: pytest.fail("the probe must not run"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "tiny-tasks", "--device", "cpu", "dropbp.advise=true", *SMALL,
                 "--output-dir", str(tmp_path / "run")]) == 2
    assert "probes on one process" in capsys.readouterr().err


def test_the_installed_probe_is_found():
    assert train.advisor().__name__ == "advise_run"
