"""``dropbp advise``: the probe's measurements on a tiny model, the predictor and recommendation, the recipe keys
it prints, and bad input."""
from __future__ import annotations

import json

import pytest

from dropbp import backends
from dropbp.benchmarks.advise.predict import Prediction, predict, recommend
from dropbp.benchmarks.advise.probe import Candidate, GradientProbe, Measured, measure_candidates
from dropbp.core import DropBP, StepFlops
from dropbp.recipes.cli import main
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import load_recipe
from tests.conftest import tiny_model, token_batch


def _loss(model, ids):
    return model(ids, labels=ids).loss


def _measure(candidates, rounds=2, masks=2):
    model = tiny_model(layers=4)
    probe = GradientProbe(model, _loss, backends.get("cpu"), seq_len=16)
    try:
        return measure_candidates(probe, candidates, lambda step: token_batch(seed=step), rounds=rounds, masks=masks,
                                  flops_model=StepFlops(model, 16, backward=2.0)), model
    finally:
        probe.close()


def test_probe_costs_are_ordered_by_rate_and_rate_zero_agrees_exactly():
    candidates = [Candidate(0.0, "uniform"), Candidate(0.5, "uniform"), Candidate(0.875, "uniform"),
                  Candidate(0.5, "depth"), Candidate(0.5, "sensitivity")]
    (exact, measured), model = _measure(candidates)
    assert DropBP.of(model) is None  # the probe leaves no engine behind
    zero, half, most, depth, sens = measured
    assert zero.flops_ratio == pytest.approx(1.0) and zero.drop_fraction == 0.0
    assert most.flops_ratio < half.flops_ratio < zero.flops_ratio
    assert depth.drop_fraction == pytest.approx(0.5, abs=0.02) and sens.drop_fraction == pytest.approx(0.5, abs=0.02)
    # at rate 0 the candidate's gradient is the exact one: same batch cosine 1, next batch as exact backprop's
    assert zero.same_cos == pytest.approx([1.0, 1.0], abs=1e-9)
    assert zero.next_cos == pytest.approx(exact.next_cos, abs=1e-9)
    assert all(c < 1.0 - 1e-6 for c in most.same_cos)  # dropping changes the gradient
    assert len(exact.seconds) == 2 and len(half.seconds) == 4 and all(s > 0 for s in half.seconds)


def _measured(label, seconds, next_cos):
    return Measured(label, 0.5, 0.8, seconds=seconds, next_cos=next_cos, mean_next_cos=next_cos,
                    same_cos=[0.5] * len(next_cos))


def test_prediction_is_step_speed_times_the_gradient_kept_and_off_when_none_pays():
    exact = _measured("exact backprop", [2.0, 2.0, 2.0], [0.4, 0.5, 0.6])
    slow_keep = predict(exact, _measured("a", [1.6, 1.6, 1.6], [0.2, 0.25, 0.3]))  # 1.25x cheaper, keeps half
    assert slow_keep.speed == pytest.approx(1.25) and slow_keep.kept == pytest.approx(0.5)
    assert slow_keep.predicted == pytest.approx(0.625) and slow_keep.low <= slow_keep.predicted <= slow_keep.high
    assert slow_keep.flops_speed == pytest.approx(1.25)
    assert recommend([slow_keep]) is None  # every candidate below 1: DropBP off
    pays = predict(exact, _measured("b", [1.0, 1.0, 1.0], [0.36, 0.45, 0.54]))  # 2x cheaper, keeps 0.9
    assert pays.predicted == pytest.approx(1.8)
    assert recommend([slow_keep, pays]) is pays
    assert predict(exact, _measured("b", [1.0] * 3, [0.36, 0.45, 0.54]), seed=0) == pays  # seeded bootstrap
    with pytest.raises(ValueError, match="basis"):
        recommend([pays], "median")
    assert isinstance(pays, Prediction)


def test_candidate_keys_are_a_valid_recipe_setting():
    for candidate in (Candidate(0.5, "depth"), Candidate(0.75, "uniform"), Candidate(0.5, "sensitivity")):
        recipe = load_recipe(shipped()["tiny-tasks"], candidate.recipe_keys(), device="cpu")
        assert recipe.dropbp.drop_rate == candidate.drop_rate
        assert recipe.dropbp.allocation == candidate.allocation


@pytest.mark.slow
def test_advise_runs_on_a_recipe_and_prints_its_recommendation(tmp_path, capsys):
    code = main(["advise", "tiny-tasks", "--device", "cpu", "--budget", "0.5", "--drop-rates", "0.5",
                 "--allocations", "uniform,depth", "--masks", "1", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    shown = capsys.readouterr().out
    assert "Recommendation:" in shown and "uniform p=0.5" in shown and "depth p=0.5" in shown
    result = json.loads((tmp_path / "advise-tiny-tasks.json").read_text())
    assert result["rounds"] >= 2 and [p["label"] for p in result["predictions"]] == ["uniform p=0.5", "depth p=0.5"]
    if result["recommendation"] is None:
        assert result["keys"] == [] and all(p["predicted"] <= 1.0 for p in result["predictions"])
    else:
        assert result["keys"][0] == "dropbp.drop_rate=0.5"
    assert (tmp_path / "advise-tiny-tasks.png").stat().st_size > 0


def test_every_validation_case_names_a_target_that_exists_and_a_verdict():
    from pathlib import Path

    from dropbp.benchmarks.advise.validation import CASES
    from dropbp.recipes.config.registry import find_recipe

    root = Path(__file__).resolve().parents[2]
    for case in CASES:
        assert case.verdict in ("pays", "off") and case.evidence
        if case.target.endswith(".yaml"):
            assert (root / case.target).is_file(), case.target
        else:
            find_recipe(case.target)
            load_recipe(find_recipe(case.target), list(case.overrides), for_run=False)


@pytest.mark.parametrize("argv, words", [
    (["advise", "", "--device", "cpu", "--recipe", ""], "recipe"),
    (["advise", "no-such-recipe", "--device", "cpu"], "no-such-recipe"),
    (["advise", "tiny-tasks", "--device", "cpu", "--budget", "0"], "--budget"),
    (["advise", "tiny-tasks", "--device", "cpu", "--allocations", "random"], "--allocations"),
    (["advise", "tiny-tasks", "--device", "cpu", "--budget", "0.001"], "too small to measure"),
])
def test_bad_input_is_one_paragraph_and_exit_2(tmp_path, capsys, argv, words):
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


@pytest.mark.slow
def test_the_advise_key_probes_then_trains_with_the_advice_and_keeps_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "tiny-tasks", "--device", "cpu", "dropbp.advise=true", "dropbp.advise_budget=0.75",
                 "train.steps=2", "train.eval_every=0", "train.exact_match=0", "train.micro_batch_size=2",
                 "--output-dir", str(out), "--quiet"]) == 0
    advice = json.loads((out / "advise" / "advise-tiny-tasks.json").read_text())
    saved = load_recipe(out / "recipe.yaml", device="cpu")  # what a resume reads: the advised setting, no probe
    assert not saved.dropbp.advise
    chosen = dict(key.split("=", 1) for key in advice["keys"] or ["dropbp.drop_rate=0"])
    assert saved.dropbp.drop_rate == float(chosen["dropbp.drop_rate"])
    assert saved.dropbp.allocation == chosen.get("dropbp.allocation", "auto")  # off: the recipe's own
    assert "dropbp.advise: training with" in capsys.readouterr().err
