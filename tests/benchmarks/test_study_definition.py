"""A new study is a settings class and a workload function, nothing else: defined here on a tiny model, run through
``dropbp bench``, with the one result schema, report and figure."""
from __future__ import annotations

import dataclasses
import json

import torch

from dropbp.benchmarks.harness import StudySettings
from dropbp.benchmarks.registry import BENCHMARKS
from dropbp.benchmarks.study import Contender, contender_trainer, train_contender, trainer_timer
from dropbp.benchmarks.study import SCHEMA
from dropbp.benchmarks.study_benchmark import StudyPlan, define_study
from dropbp.recipes.cli import main
from dropbp.recipes.for_benchmarks import POSITIVE, SEEDS, setting
from tests.conftest import tiny_model, token_batch


@dataclasses.dataclass
class ToySettings(StudySettings):
    """The toy study's own fields; the runner's knobs come from StudySettings."""

    steps: int = setting(4, "optimizer steps of the baseline", allowed=POSITIVE)
    seeds: tuple[int, ...] = setting((0,), "seeds", allowed=SEEDS)


class ToyWorkload:
    """A tiny Llama on seeded random tokens (the same batch sequence for every contender)."""

    def __init__(self, backend):
        self.backend = backend

    def _trainer(self, contender, lr, seed, steps):
        return contender_trainer(tiny_model(seed=seed), contender, lr, self.backend, total_steps=steps, seq_len=16,
                                 seed=seed)

    @staticmethod
    def batch(step):
        return token_batch(seed=step), None

    @staticmethod
    def evaluate(model):
        with torch.no_grad():
            return float(model(token_batch(seed=999), labels=token_batch(seed=999)).loss), None

    def train(self, contender, lr, seed, steps, *, progress):
        return train_contender(self._trainer(contender, lr or 1e-3, seed, steps), contender, lr=lr or 1e-3, seed=seed,
                               steps=steps, batch=self.batch, evaluate=self.evaluate, eval_every=2,
                               backend=self.backend, progress=progress)

    def timer(self, contender):
        return trainer_timer(self._trainer(contender, 1e-3, 0, 64), self.batch, self.backend, warmup=1)


def toy_workload(settings: ToySettings, backend) -> StudyPlan:
    contenders = [Contender("DropBP off"), Contender("DropBP 0.5", "dropbp", "dropbp", 0.5)]
    return StudyPlan(ToyWorkload(backend), contenders, settings.steps, extras={"data": "seeded random tokens"})


def test_a_study_defined_by_settings_and_workload_runs_through_dropbp_bench(tmp_path):
    define_study("toy-study", ToySettings, toy_workload, "a toy study defined by a test")
    try:
        code = main(["bench", "toy-study", "--device", "cpu", "--out", str(tmp_path), "--quiet",
                     "--calibration-rounds", "1", "--calibration-steps", "1", "--steps", "4"])
        assert code == 0
        result = json.loads((tmp_path / "toy-study.json").read_text())
        assert result["benchmark"] == "toy-study" and result["schema"] == SCHEMA
        assert result["extras"] == {"data": "seeded random tokens"}
        assert result["options"]["steps"] == 4
        [verdict] = result["study"]["verdicts"]
        assert verdict["label"] == "DropBP 0.5" and verdict["seed"] == 0 and verdict["loss_ratio"] > 0
        labels = {run["label"] for run in result["study"]["equal_time_runs"]}
        assert labels == {"DropBP off", "DropBP 0.5"}
        assert result["study"]["step_time_model"]["points"]  # the one clock, calibrated
        assert "DropBP 0.5" in (tmp_path / "toy-study.md").read_text()
        assert (tmp_path / "toy-study.png").stat().st_size > 0
        # a bad option of the new study is refused like any other: one paragraph, exit 2
        assert main(["bench", "toy-study", "--device", "cpu", "--out", str(tmp_path), "--steps", "0"]) == 2
    finally:
        BENCHMARKS.pop("toy-study")
