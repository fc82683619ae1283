"""Runs that survive schedulers and careless hands: one run per folder, SIGTERM/SIGINT checkpoint and resume exactly,
damaged checkpoints are detected and skipped, a diverged run stops with exit code 3, files are written only as
regular files."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropbp.core.errors import ConfigError
from dropbp.recipes.cli import main
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import load_recipe
from dropbp.recipes.finetune import FineTune
from dropbp.recipes.training.checkpoint import checkpoints, intact_checkpoint, verify_checkpoint
from dropbp.recipes.training.divergence import DivergenceGuard, TrainingDiverged
from dropbp.recipes.training.run_lock import RunLock
from dropbp.recipes.training.stop_signals import StopSignals

from ..conftest import logged_losses

SMALL = ["model.config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, "
         "num_key_value_heads: 2}", "data.seq_len=40", "train.micro_batch_size=4", "train.exact_match=0",
         "train.eval_every=0"]


def job(out: Path, *overrides: str, resume: bool = False) -> FineTune:
    return FineTune(load_recipe(shipped()["tiny-tasks-lora"], [*SMALL, *overrides], device="cpu"), out,
                    resume=resume, progress=False)


def run(out: Path, *overrides: str, resume: bool = False, signal_at: int | None = None) -> dict:
    """One run in this process; ``signal_at``: SIGTERM this process during that optimizer step (as a scheduler
    would), with the CLI's signal handling in force."""
    fine_tune = job(out, *overrides, resume=resume)
    with StopSignals() as signals:
        fine_tune.signals = signals
        fine_tune.setup()
        if signal_at is not None:
            step = fine_tune.runner.step

            def step_and_signal(index, batches):
                result = step(index, batches)
                if index == signal_at:
                    os.kill(os.getpid(), signal.SIGTERM)
                return result

            fine_tune.runner.step = step_and_signal
        try:
            return fine_tune.train()
        finally:
            fine_tune.cleanup()


losses = logged_losses


@pytest.mark.slow  # seconds, not a unit check: make test runs it, test-fast does not
def test_two_runs_on_one_folder_exactly_one_runs(tmp_path):
    out = tmp_path / "run"
    first = job(out, "train.steps=1")
    with pytest.raises(ConfigError, match=rf"in use by another dropbp run \(pid {os.getpid()}\)"):
        job(out, "train.steps=2", "train.seed=1")
    first.setup()
    first.train()
    first.cleanup()  # releases the lock: the folder holds one run, and a second start is told so
    assert [p.name for p in checkpoints(out / "checkpoints")] == ["step-000001"]
    with pytest.raises(ConfigError, match="already holds a run"):
        job(out, "train.steps=2")


def test_a_lock_of_a_dead_process_is_not_obeyed_and_a_failed_start_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("999999\n")  # what a killed run leaves: the file, without the kernel's lock
    with RunLock(out):
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"
    fresh = tmp_path / "never"
    with pytest.raises(ConfigError, match="no recipe.yaml"):
        job(fresh, resume=True)
    assert not fresh.exists()  # nothing half-written on disk


@pytest.mark.slow  # seconds, not a unit check: make test runs it, test-fast does not
def test_sigterm_checkpoints_at_the_next_step_and_resume_equals_the_uninterrupted_run(tmp_path):
    steps = ("train.steps=30",)
    run(tmp_path / "whole", *steps)
    parts = tmp_path / "parts"
    stopped = run(parts, *steps, signal_at=11)  # the signal arrives during step 12 (index 11)
    assert stopped["interrupted"] == "SIGTERM" and stopped["steps"] == 12 and not stopped["finished"]
    assert [p.name for p in checkpoints(parts / "checkpoints")] == ["step-000012"]
    assert (parts / "loss.png").is_file()
    run(parts, *steps, resume=True)
    assert losses(parts) == losses(tmp_path / "whole") and len(losses(parts)) == 30


@pytest.mark.slow
def test_an_interruption_before_any_checkpoint_resumes_from_step_zero(tmp_path):
    out = tmp_path / "run"
    run(out, "train.steps=6", "train.stop_after_steps=3")
    shutil.rmtree(out / "checkpoints")  # as if killed before its first checkpoint
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / ".step-000003.partial-x").mkdir()  # and during a save
    run(out, "train.steps=6", resume=True)
    run(tmp_path / "whole", "train.steps=6")
    assert losses(out) == losses(tmp_path / "whole")
    assert not list((out / "checkpoints").glob(".step-*"))


@pytest.mark.slow
def test_a_damaged_checkpoint_is_detected_and_the_previous_intact_one_is_used(tmp_path, capsys):
    steps = ("train.steps=8", "train.save_every=3", "train.keep_checkpoints=3")
    run(tmp_path / "whole", *steps)
    out = tmp_path / "run"
    run(out, *steps, "train.stop_after_steps=6")
    weights = out / "checkpoints" / "step-000006" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    start = len(data) // 2
    data[start:start + 4096] = bytes(b ^ 0xFF for b in data[start:start + 4096])  # 4 KiB flipped
    weights.write_bytes(bytes(data))
    assert "adapter_model.safetensors does not match its checksum" in verify_checkpoint(weights.parent)
    run(out, *steps, resume=True)
    said = capsys.readouterr().out
    assert "checkpoint step-000006 is damaged" in said and "resumed from" in said and "step-000003" in said
    assert losses(out) == losses(tmp_path / "whole")


@pytest.mark.slow  # seconds, not a unit check: make test runs it, test-fast does not
def test_a_checkpoint_claiming_another_step_is_refused(tmp_path):
    out = tmp_path / "run"
    run(out, "train.steps=4")
    state = out / "checkpoints" / "step-000004" / "state.json"
    state.write_text(state.read_text().replace('"step": 4', '"step": 999'))
    folder, skipped = intact_checkpoint(out / "checkpoints")
    assert folder is None and "state.json does not match its checksum" in skipped[0][1]
    with pytest.raises(ConfigError, match="no intact checkpoint"):
        run(out, "train.steps=4", resume=True)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("saved") / "run"
    run(out, "train.steps=2")
    return out / "checkpoints" / "step-000002"


@pytest.mark.slow  # trains a run to damage first: make test runs it, test-fast does not
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_to_a_checkpoint_is_always_detected(saved_checkpoint, tmp_path, data):
    """Whatever one file suffers (bytes changed, cut short, grown, removed), the checkpoint no longer passes."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path)) / "checkpoint"
    shutil.copytree(saved_checkpoint, folder)
    names = sorted(p.name for p in folder.iterdir())
    victim = folder / data.draw(st.sampled_from(names))
    content = bytearray(victim.read_bytes())
    damage = data.draw(st.sampled_from(["flip", "truncate", "append", "remove"]))
    if damage == "flip" and content:
        at = data.draw(st.integers(0, len(content) - 1))
        content[at] ^= data.draw(st.integers(1, 255))
        victim.write_bytes(bytes(content))
    elif damage == "truncate":
        victim.write_bytes(bytes(content[:data.draw(st.integers(0, max(0, len(content) - 1)))]))
    elif damage == "append":
        victim.write_bytes(bytes(content) + b"\0")
    else:
        victim.unlink()
    assert verify_checkpoint(folder) is not None
    shutil.rmtree(folder)


def test_a_manifest_cut_by_its_last_newline_is_damaged(saved_checkpoint, tmp_path):
    """Found by the property test above: such a manifest still parses to the same table."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(saved_checkpoint, folder)
    manifest = folder / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-1])
    assert verify_checkpoint(folder) == "its manifest.json was changed after it was written"


def test_the_divergence_guard_stops_non_finite_and_exploding_losses():
    guard = DivergenceGuard(factor=10)
    for step, loss in enumerate([3.0, 2.5, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.01, 0.3], 1):
        guard.check(step, loss)  # a spike far below where the run started is not a divergence
    with pytest.raises(TrainingDiverged, match="step 13: the loss 40 is more than 10 times"):
        guard.check(13, 40.0)
    with pytest.raises(TrainingDiverged, match="the loss is nan"):
        DivergenceGuard().check(1, float("nan"))


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_a_diverged_run_exits_3_and_keeps_no_bad_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "tiny-tasks-lora", *SMALL, "train.steps=6", "optim.lr=1e30", "--output-dir", str(out),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "training diverged at step" in err and "Traceback" not in err
    assert not checkpoints(out / "checkpoints")


def test_port_writes_only_regular_files(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # as a device node would be (making one needs root)
    link = tmp_path / "link.yaml"
    link.symlink_to(tmp_path / "elsewhere.yaml")
    for target in (fifo, link):
        assert main(["port", "tiny-tasks", "--to", "cpu", "-o", str(target)]) == 2
        assert "dropbp writes only regular files" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere.yaml").exists() and fifo.is_fifo()


@pytest.mark.slow
def test_the_masks_log_is_never_written_through_a_link(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "masks-rank0.csv").symlink_to(tmp_path / "planted.csv")
    with pytest.raises(ConfigError, match="must be a regular file, not a link"):
        run(out, "train.steps=2", "train.log_masks=true", "dropbp.drop_rate=0.5")
    assert not (tmp_path / "planted.csv").exists()


@pytest.mark.slow
def test_masks_log_has_one_row_per_step_after_a_resume(tmp_path):
    out = tmp_path / "run"
    overrides = ("train.steps=6", "train.log_masks=true", "train.save_every=2")
    run(out, *overrides, "train.stop_after_steps=3")
    shutil.rmtree(out / "checkpoints" / "step-000003")  # as if killed after step 3, before its checkpoint
    run(out, *overrides, resume=True)  # from step 2: its mask row is not written twice
    steps = [int(line.split(",")[0]) for line in (out / "masks-rank0.csv").read_text().splitlines()]
    assert steps == list(range(6))


@pytest.mark.slow
def test_sigterm_to_the_cli_exits_143_with_a_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dropbp.recipes", "train", "tiny-tasks-lora", *SMALL, "train.steps=3000",
               "--output-dir", str(out), "--quiet"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "metrics.csv").is_file() or len((out / "metrics.csv").read_text().splitlines()) < 12:
        assert child.poll() is None and time.monotonic() < deadline, child.stderr.read() if child.stderr else ""
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 143, stderr
    assert "received SIGTERM: saved a checkpoint at step" in stderr and "Traceback" not in stderr
    saved = checkpoints(out / "checkpoints")
    assert len(saved) == 1 and 10 <= int(saved[0].name.split("-")[1]) < 3000
    assert (out / "loss.png").is_file() and not list((out / "checkpoints").glob(".step-*"))


def test_a_checkpoint_state_must_match_its_folder_and_the_run():
    from dropbp.recipes.training.run_folder import resumed_step

    folder = Path("checkpoints/step-000004")
    assert resumed_step(folder, {"step": 4, "total_steps": 4}, 4) == 4
    for state in ({"step": 999, "total_steps": 4}, {"step": 3, "total_steps": 4}, {"step": 4, "total_steps": 8},
                  {"step": "4"}):
        with pytest.raises(ConfigError, match="does not belong to this run"):
            resumed_step(folder, state, 4)


@pytest.mark.slow
def test_a_resume_on_changed_data_is_refused_unless_allowed(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    shipped_data = shipped()["tiny-tasks"].parent.parent / "task_data" / "train.jsonl"
    lines = shipped_data.read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:400]))
    out = tmp_path / "run"
    overrides = ("train.steps=4", f"data.train={data}")
    run(out, *overrides, "train.stop_after_steps=2")
    data.write_text("".join(lines[400:800]))
    with pytest.raises(ConfigError, match="data changed since this run began"):
        run(out, *overrides, resume=True)
    fine_tune = FineTune(load_recipe(shipped()["tiny-tasks-lora"], [*SMALL, *overrides], device="cpu"), out,
                         resume=True, progress=False, allow_changed_data=True)
    fine_tune.setup()
    fine_tune.train()
    fine_tune.cleanup()
    assert "continuing on the new data" in capsys.readouterr().out


def test_the_remote_code_notice_comes_before_anything_is_loaded(tmp_path, monkeypatch, capsys):
    import dropbp.recipes.finetune as finetune

    def tokenizer_loader(*args, **kwargs):
        assert "model.trust_remote_code is on" in capsys.readouterr().out
        raise ConfigError("stop here")

    monkeypatch.setattr(finetune, "load_tokenizer", tokenizer_loader)
    with pytest.raises(ConfigError, match="stop here"):
        job(tmp_path / "run", "model.trust_remote_code=true").setup()


def test_sensitivity_allocation_is_refused_with_several_ranks_and_auto_means_uniform_there(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="dropbp.allocation sensitivity is not supported with several ranks"):
        job(tmp_path / "run", "dropbp.allocation=sensitivity")
