"""Engine state travels with checkpoints: for every technique and every allocation mode, a run stopped at step 10 and
resumed to 20 ends with the same report() (counters, rates, realised drop fraction), the same allocation events and
the same losses as the run that went straight to 20."""
from __future__ import annotations

from pathlib import Path

import pytest

from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import load_recipe
from dropbp.recipes.finetune import FineTune

from ..conftest import logged_losses

SMALL = ["model.config={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
         "num_key_value_heads: 2}", "data.seq_len=40", "train.micro_batch_size=8", "train.exact_match=0",
         "train.steps=20", "train.eval_every=0", "train.save_every=0", "train.log_every=1"]
#: Every case but the schedule one pins a constant rate (as tiny-tasks ships).
CONSTANT = "dropbp.schedule.kind=constant"
CASES = {
    "dropbp-uniform": [CONSTANT, "dropbp.drop_rate=0.5", "dropbp.allocation=uniform"],
    "dropbp-sensitivity": [CONSTANT, "dropbp.drop_rate=0.5", "dropbp.allocation=sensitivity",
                           "dropbp.allocate_at=0.1"],
    "dropbp-online": [CONSTANT, "dropbp.drop_rate=0.5", "dropbp.allocation=online", "dropbp.reallocate_every=5"],
    "dropbp-schedule": ["dropbp.drop_rate=0.75", "dropbp.sampler=pool", "dropbp.pool_size=4",
                        "dropbp.schedule.kind=cosine", "dropbp.schedule.warmup_steps=3"],
    "layerdrop": [CONSTANT, "dropbp.technique=layerdrop", "dropbp.drop_rate=0.3"],
    "pld": [CONSTANT, "dropbp.technique=pld", "dropbp.drop_rate=0.3", "technique.gamma=0.05"],
    "freeze": [CONSTANT, "dropbp.technique=freeze", "dropbp.drop_rate=0.5"],
}


def run(out: Path, overrides: list[str], resume: bool = False) -> dict:
    job = FineTune(load_recipe(shipped()["tiny-tasks"], [*SMALL, *overrides], device="cpu"), out, resume=resume,
                   progress=False)
    job.setup()
    try:
        job.train()
        allocation = None if job.technique is None else job.technique.allocation
        return {"report": None if job.policy is None else job.policy.report(),
                "schedule": None if allocation is None else allocation.state_dict()}
    finally:
        job.cleanup()


def losses(out: Path) -> list[str]:
    return [loss for _, loss in logged_losses(out)]


@pytest.mark.slow  # about 2 s each; the fast lane resumes the engine and the schedules in tests/core
@pytest.mark.parametrize("case", list(CASES))
def test_report_after_10_plus_resumed_10_equals_report_after_20(tmp_path, case):
    whole = run(tmp_path / "whole", CASES[case])
    run(tmp_path / "parts", [*CASES[case], "train.stop_after_steps=10"])
    resumed = run(tmp_path / "parts", CASES[case], resume=True)
    assert resumed == whole
    assert losses(tmp_path / "parts") == losses(tmp_path / "whole") and len(losses(tmp_path / "whole")) == 20
    if case == "dropbp-online":  # reallocated at 5, 10 and 15, the one at 10 right after the resume
        assert [event["step"] for event in whole["schedule"]["events"]] == [5, 10, 15]
    if whole["report"] is not None:
        assert whole["report"]["steps"] == 20
    if case == "dropbp-schedule":  # 3 warm-up steps at 0, then a cosine from 0.75 to 0 in 4 levels
        assert whole["report"]["schedule"] == "cosine to 0 over 20 steps, 4 levels, 3 warm-up steps at 0"
        assert 0.2 < whole["report"]["scheduled_drop_fraction"] < 0.4
