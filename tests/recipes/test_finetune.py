"""Fine-tuning from recipes on the CPU: the tiny recipe learns, resumed runs equal uninterrupted ones bit for bit,
QLoRA trains with DropBP, checkpoints survive a SIGKILL and load with plain PEFT."""
from __future__ import annotations

import csv
import itertools
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dropbp.core import DropBP
from dropbp.core.errors import ConfigError
from dropbp.core.memory import saved_activation_bytes
from dropbp.recipes.training.checkpoint import latest_checkpoint, load_checkpoint
from dropbp.recipes import training_flops
from dropbp.recipes.finetune import FineTune
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import load_recipe

from ..conftest import logged_losses

SMALL = ["model.config={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
         "num_key_value_heads: 2}", "data.seq_len=40", "train.micro_batch_size=8", "train.exact_match=0"]


#: tiny-tasks as these tests were written for (and as it ships): DropBP at a constant 0.5.
CONSTANT = ["dropbp.drop_rate=0.5", "dropbp.schedule.kind=constant"]
TINY = [*SMALL, *CONSTANT]


def run(name: str, out: Path, *overrides: str, resume: bool = False) -> dict:
    recipe = load_recipe(shipped()[name], [*SMALL, *(CONSTANT if name == "tiny-tasks" else []), *overrides],
                         device="cpu")
    job = FineTune(recipe, out, resume=resume, progress=False)
    job.setup()
    try:
        return job.train()
    finally:
        job.cleanup()


losses = logged_losses


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_tiny_recipe_learns_and_writes_its_outputs(tmp_path):
    out = tmp_path / "run"
    summary = run("tiny-tasks", out, "train.steps=60", "train.eval_every=30", "train.save_every=0",
                  "train.exact_match=8")
    rows = summary["rows"]
    assert summary["finished"] and [r["step"] for r in rows if r["val_loss"]] == [0, 30, 60]
    assert float(rows[-1]["val_loss"]) < 0.6 * float(rows[0]["val_loss"])  # it learns
    assert rows[0]["exact_match"] == "0.0"
    with open(out / "metrics.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:5] == ["step", "loss", "lr", "tokens_per_s", "realized_drop_fraction"] and "val_loss" in header
    assert 0.3 < float(rows[-1]["realized_drop_fraction"]) < 0.7
    fraction = float(rows[-1]["realized_drop_fraction"])
    assert summary["savings"].startswith(f"dropbp: realised drop fraction {fraction:.2f} of the branches' backward")
    assert re.search(r"\(scheduled 0\.5\d\); about ", summary["savings"])  # sensitivity rates: about the budget
    assert {p.name for p in out.iterdir()} >= {"metrics.csv", "loss.png", "recipe.yaml", "checkpoints"}
    assert load_recipe(out / "recipe.yaml", base_dir=shipped()["tiny-tasks"].parent).train.steps == 60
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000060"]


@pytest.mark.slow  # the fast lane resumes the engine and schedules in tests/core
@pytest.mark.parametrize("name", ["tiny-tasks", "tiny-tasks-lora"])
def test_a_resumed_run_equals_the_uninterrupted_run(tmp_path, name):
    steps = ["train.steps=20", "train.eval_every=10", "train.save_every=0"]
    whole = tmp_path / "whole"
    run(name, whole, *steps)
    parts = tmp_path / "parts"
    first = run(name, parts, *steps, "train.stop_after_steps=10")
    assert not first["finished"] and latest_checkpoint(parts / "checkpoints").name == "step-000010"
    run(name, parts, *steps, resume=True)
    assert len(losses(whole)) == 20
    assert losses(parts) == losses(whole)  # bit-identical: the CSV holds repr() of each float


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_resume_refuses_a_changed_recipe_and_a_fresh_run_refuses_a_used_folder(tmp_path):
    from dropbp.core.errors import ConfigError

    out = tmp_path / "run"
    run("tiny-tasks-lora", out, "train.steps=4", "train.eval_every=0")
    with pytest.raises(ConfigError, match="already holds a run"):
        run("tiny-tasks-lora", out, "train.steps=4", "train.eval_every=0")
    with pytest.raises(ConfigError, match=r"differs .* in optim.lr"):
        run("tiny-tasks-lora", out, "train.steps=4", "train.eval_every=0", "optim.lr=0.1", resume=True)


@pytest.mark.slow  # bitsandbytes' CPU fallback; make test runs it
def test_qlora_trains_with_dropbp_on_the_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    recipe = load_recipe(shipped()["tiny-tasks-qlora"], ["train.steps=3", "train.eval_every=0",
                                                         "train.exact_match=0", "train.micro_batch_size=4"],
                         device="cpu")
    job = FineTune(recipe, tmp_path / "run", progress=False)
    job.setup()
    model, dropbp = job.model, job.dropbp
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized and all(not m.weight.requires_grad for m in quantized.values())  # 4-bit base frozen
    # Compared through state_dict: bitsandbytes may repack a 4-bit weight in place for its CPU kernel (greedy
    # decoding under no_grad, on CPUs with AVX512-BF16); the state dict holds it in the one stored layout.
    frozen = {n: m.state_dict()["weight"].clone() for n, m in quantized.items()}
    ids, labels = job.data.batch(0, 0, 1, 4)
    model.train()  # from_pretrained leaves a model in eval mode, where nothing is dropped
    dropbp.begin_step(0, mask=[i % 2 == 0 for i in range(len(dropbp.branches))])
    job.model(input_ids=ids, labels=labels).loss.backward()
    for dropped, branch in zip(dropbp.mask, dropbp.branches):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(branch.name + ".") and "lora_" in n]
        assert grads and all((g is None) == dropped for g in grads), branch.name
    job.optimizer.zero_grad(set_to_none=True)
    job.train()
    job.cleanup()
    assert all(torch.equal(m.state_dict()["weight"], frozen[n]) for n, m in quantized.items())
    saved = []
    DropBP.of(model) or dropbp.attach()
    for rate_mask in ("none", [i % 2 == 0 for i in range(len(dropbp.branches))], "all"):
        with dropbp.forced_mask(rate_mask):
            saved.append(saved_activation_bytes(model, ids))
    assert saved[0] > saved[1] > saved[2]


CHILD = r"""
import os, signal, sys
from pathlib import Path
import torch
from dropbp.recipes.training.checkpoint import save_checkpoint
from dropbp.recipes.model.build import build_model

root, kill_at = Path(sys.argv[1]), int(sys.argv[2])
model = build_model("tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1)
optimizer = torch.optim.AdamW(model.parameters())
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
save_checkpoint(root, 1, model, optimizer, scheduler, {"marker": 1}, keep=2, rng={"cpu": torch.get_rng_state()})
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
calls = {"n": 0}
original = os.fsync
def fsync(fd):
    if calls["n"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    calls["n"] += 1
    return original(fd)
os.fsync = fsync
save_checkpoint(root, 2, model, optimizer, scheduler, {"marker": 2}, keep=2, rng={"cpu": torch.get_rng_state()})
print("completed")
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [0, 3, 6])
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, kill_at):
    from dropbp.recipes.model.build import build_model

    root = tmp_path / "checkpoints"
    child = subprocess.run([sys.executable, "-c", CHILD, str(root), str(kill_at)], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    latest = latest_checkpoint(root)
    assert latest is not None and latest.name == "step-000001"
    model = build_model("tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = load_checkpoint(latest, model, optimizer, scheduler, lambda rng: torch.set_rng_state(rng["cpu"]))
    assert state["marker"] == 1 and state["step"] == 1
    reference = build_model("tiny", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_a_lora_checkpoint_loads_with_plain_peft(tmp_path):
    from peft import PeftModel

    from dropbp.recipes.model.build import build_model

    out = tmp_path / "run"
    run("tiny-tasks-lora", out, "train.steps=3", "train.eval_every=0")
    folder = latest_checkpoint(out / "checkpoints")
    base = build_model("tiny", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2)
    loaded = PeftModel.from_pretrained(base, str(folder))
    from safetensors.torch import load_file

    saved = load_file(str(folder / "adapter_model.safetensors"))
    state = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert saved and len(state) == len(saved)
    assert any(not torch.all(v == 0) for k, v in saved.items() if "lora_B" in k)  # trained, not the zero init


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_a_step_is_an_optimizer_step_micro_batches_share_its_mask(tmp_path):
    out = tmp_path / "run"
    run("tiny-tasks", out, "train.steps=3", "train.grad_accum=2", "train.eval_every=0", "train.log_masks=true",
        "dropbp.allocation=uniform")
    lines = (out / "masks-rank0.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["0", "1", "2"]  # one mask per optimizer step, not per micro
    recipe = load_recipe(shipped()["tiny-tasks"], TINY, device="cpu")
    from dropbp.recipes.model.build import build_model

    engine = DropBP(build_model("tiny", **recipe.model.config), recipe.dropbp.drop_rate, seed=recipe.masks_seed())
    expected = ["".join("1" if m else "0" for m in engine.sampler.mask(step).tolist()) for step in range(3)]
    assert [line.split(",")[1] for line in lines] == expected


@pytest.mark.parametrize("technique,extra", [("layerdrop", ["dropbp.drop_rate=0.5"]),
                                             pytest.param("pld", ["technique.theta_bar=0.5", "technique.gamma=0.5"],
                                                          marks=pytest.mark.slow)])
def test_recipes_run_layerdrop_and_pld_with_masks_from_seed_and_step(tmp_path, technique, extra):
    from dropbp.core.layerdrop import LayerDrop
    from dropbp.recipes.model.build import build_model

    out = tmp_path / "run"
    summary = run("tiny-tasks", out, "train.steps=6", "train.eval_every=0", "train.log_masks=true",
                  f"dropbp.technique={technique}", *extra)
    recipe = load_recipe(shipped()["tiny-tasks"], [*TINY, f"dropbp.technique={technique}", *extra], device="cpu")
    model = build_model("tiny", **recipe.model.config)
    engine = (LayerDrop(model, 0.5, seed=recipe.masks_seed()) if technique == "layerdrop" else
              LayerDrop.progressive(model, theta_bar=0.5, gamma=0.5, seed=recipe.masks_seed()))
    lines = (out / "masks-rank0.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in lines] == ["".join("1" if m else "0" for m in engine.mask_at(s))
                                                      for s in range(6)]
    assert any("1" in line.split(",")[1] for line in lines)
    assert summary["finished"]


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_each_step_is_timed_by_the_runs_clock_and_the_runs_flops_follow_the_rates_it_realised(tmp_path):
    recipe = load_recipe(shipped()["tiny-tasks"], [*TINY, "train.steps=4", "train.eval_every=0",
                                                   "dropbp.allocation=uniform"], device="cpu")
    job = FineTune(recipe, tmp_path / "run", progress=False)
    ticks = itertools.count()
    job.clock = lambda: float(next(ticks))
    job.setup()
    try:
        job.train()
        tokens = 8 * 40
        flops, full = (training_flops(technique, job.flops_model, tokens, 4) for technique in (job.technique, None))
        realised = job.dropbp.report()["realized_drop_fraction"]
    finally:
        job.cleanup()
    assert job.step_times == [1.0] * 4  # read once before and once after each step; evaluation left out
    model = job.flops_model
    assert full == 4 * model.step(tokens)
    backward_share = sum(model.flops) * model.backward / model.step(1)
    assert 0 < realised < 1 and 1 - flops / full == pytest.approx(realised * backward_share, rel=1e-9)


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_recipes_run_layer_freezing_and_frozen_weights_do_not_move(tmp_path):
    recipe = load_recipe(shipped()["tiny-tasks"], [*TINY, "train.steps=3", "train.eval_every=0", "train.save_every=0",
                                                   "dropbp.technique=freeze", "technique.train_top_layers=1"],
                         device="cpu")
    job = FineTune(recipe, tmp_path / "run", progress=False)
    job.setup()
    try:
        initial = {k: v.clone() for k, v in job.model.state_dict().items()}
        job.train()
        trained = job.model.state_dict()
    finally:
        job.cleanup()
    for name in ("model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"):
        assert torch.equal(trained[name], initial[name]), name
    assert not torch.equal(trained["model.layers.1.mlp.up_proj.weight"], initial["model.layers.1.mlp.up_proj.weight"])


def test_recipe_with_more_top_layers_than_the_model_has_names_the_field_and_writes_nothing(tmp_path):
    from dropbp.core.errors import ConfigError

    recipe = load_recipe(shipped()["tiny-tasks"], [*TINY, "dropbp.technique=freeze", "technique.train_top_layers=9"],
                         device="cpu")
    job = FineTune(recipe, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"technique.train_top_layers must be an integer in 1..2"):
        job.setup()
    assert not (tmp_path / "run").exists()


def test_recipe_refuses_sensitivity_allocation_with_another_technique():
    from dropbp.core.errors import ConfigError

    with pytest.raises(ConfigError, match="dropbp.allocation sensitivity needs dropbp.technique dropbp or freeze-dropbp"):
        load_recipe(shipped()["tiny-tasks"], [*CONSTANT, "dropbp.technique=layerdrop", "dropbp.allocation=sensitivity"],
                    device="cpu")


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_freeze_and_dropbp_combined_freeze_the_bottom_and_drop_above(tmp_path):
    four = ["model.config={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 4, num_attention_heads: 4, "
            "num_key_value_heads: 2}"]
    recipe = load_recipe(shipped()["tiny-tasks"], [*TINY, *four, "train.steps=4", "train.eval_every=0",
                                                   "train.save_every=0", "train.log_masks=true",
                                                   "dropbp.technique=freeze-dropbp", "technique.train_top_layers=2",
                                                   "dropbp.drop_rate=0.5"], device="cpu")
    job = FineTune(recipe, tmp_path / "run", progress=False)
    job.setup()
    try:
        assert [b.name for b in job.dropbp.branches] == [f"model.layers.{i}.{kind}" for i in (2, 3)
                                                         for kind in ("self_attn", "mlp")]
        initial = {k: v.clone() for k, v in job.model.state_dict().items()}
        job.train()
        trained = job.model.state_dict()
        masks = [line.split(",")[1] for line in (tmp_path / "run" / "masks-rank0.csv").read_text().split()]
        assert masks == ["".join("1" if m else "0" for m in job.dropbp.sampler.mask(s).tolist()) for s in range(4)]
    finally:
        job.cleanup()
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight",
                 "model.embed_tokens.weight"):
        assert torch.equal(trained[name], initial[name]), name
    assert not torch.equal(trained["lm_head.weight"], initial["lm_head.weight"])


def test_sensitivity_is_measured_on_the_recipes_labels_not_on_prompt_and_padding_tokens(tmp_path, monkeypatch):
    """``dropbp train`` hands the allocation the step's ids *and* labels: prompt and padding positions carry -100,
    so they do not enter the loss the sensitivities are measured on (as in training)."""
    from dropbp.core import rate_allocation

    seen = []
    measure = rate_allocation.compute_sensitivity

    def recording(method, model, dropbp, batch, **kwargs):
        seen.append({key: value.clone() for key, value in batch.items()})
        return measure(method, model, dropbp, batch, **kwargs)

    monkeypatch.setattr(rate_allocation, "compute_sensitivity", recording)
    recipe = load_recipe(shipped()["tiny-tasks"], [*SMALL, *CONSTANT, "dropbp.allocation=sensitivity",
                                                   "dropbp.allocate_at=0.25", "train.steps=4"], device="cpu")
    job = FineTune(recipe, tmp_path / "run", progress=False)
    job.setup()
    try:
        job.train()
        ids, labels = job.data.batch(1, 0, recipe.train.grad_accum, recipe.train.micro_batch_size, 0, 1)
    finally:
        job.cleanup()
    assert len(seen) == 1 and set(seen[0]) == {"input_ids", "labels"}
    assert torch.equal(seen[0]["input_ids"], ids) and torch.equal(seen[0]["labels"], labels)
    ignored = seen[0]["labels"] == -100
    assert ignored.any() and (~ignored).any()  # prompt and padding positions are out of the measured loss


def test_a_recipe_trains_output_projections_of_dropped_branches_and_refuses_it_for_layerdrop(tmp_path):
    recipe = load_recipe(shipped()["tiny-tasks"], [*SMALL, *CONSTANT, "dropbp.allocation=uniform", "train.steps=2",
                                                   "dropbp.train_output_projection=true"], device="cpu")
    job = FineTune(recipe, tmp_path / "run", progress=False)
    job.setup()
    try:
        job.train()
        report = job.dropbp.report()
    finally:
        job.cleanup()
    assert report["trained_output_projections"] == len(report["branches"]) > 0
    with pytest.raises(ConfigError, match="dropbp.train_output_projection needs dropbp.technique"):
        load_recipe(shipped()["tiny-tasks"], ["dropbp.technique=layerdrop", "dropbp.drop_rate=0.5",
                                              "dropbp.train_output_projection=true"], device="cpu")
