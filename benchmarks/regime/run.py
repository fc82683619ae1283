"""Running the regime benchmark: the task data, pre-training (cached), one fine-tuning run per contender, learning
rate and seed (each cached as JSON, so an interrupted study continues where it stopped), and the whole study."""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.core.progress import progress_bar
from dropbp.core.errors import ConfigError
from dropbp.core.seeding import seeded
from dropbp.recipes import (ByteTokenizer, DataSection, StepRunner, family_folder, batch_at, build_model,
                            environment, load_records, lr_scheduler, stdlib_corpus, teacher_forced_exact_match,
                            to_windows, tokenize, write_text_atomic)

from ..harness import CurvePoint, cache_dir, cache_key, cached_pretraining, step_clock
from ..paper import PAPER_CONVERGENCE
from .report import RegimeRun, summarise
from .step_time import cached_calibration, clock_description, modelled
from .settings import Contender, RegimeSettings, plan
from .trainer import batch_indices, prepare

#: The tasks the learn regime pre-trains on (strings; the numbers family is wholly new to it).
PRETRAIN_TASKS = ("Repeat the word.", "Write the word in capitals.")


@dataclass
class TaskData:
    """Fine-tuning windows (every task) and validation windows (held-out words)."""

    train_ids: torch.Tensor
    train_labels: torch.Tensor
    val_ids: torch.Tensor
    val_labels: torch.Tensor


def family_records(family: str, split: str) -> list[dict[str, Any]]:
    """The shipped records of a task family's ``split`` (``train`` or ``validation``)."""
    folder = family_folder(family)
    return load_records(str(folder / f"{split}.jsonl"), folder, f"{family} task data/{split}")


#: What the adapt regime's fine-tuning teaches: a style (every answer ends with a full stop) on skills the model
#: was pre-trained on without it.
ADAPT_STYLE = "."


def finetune_record(record: dict[str, Any], regime: str) -> dict[str, Any]:
    """A fine-tuning example: the shipped record, its answer in the adapt regime's style."""
    return {**record, "output": record["output"] + ADAPT_STYLE} if regime == "adapt" else record


def task_data(seq_len: int, family: str = "strings", regime: str = "learn") -> TaskData:
    """A task family's shipped instruction data as one-example windows (prompt left out of the loss; in the adapt
    regime with its style); refused when an example does not fit ``seq_len`` (its answer would be cut)."""
    spec = DataSection(format="alpaca", template="plain", mask_prompt=True, seq_len=seq_len)
    tokenizer = ByteTokenizer()
    windows = {}
    for split in ("train", "validation"):
        records = [finetune_record(r, regime) for r in family_records(family, split)]
        examples = tokenize(records, spec, tokenizer, split)
        longest = max(len(e.ids) for e in examples)
        if longest > seq_len:
            raise ConfigError(f"regime.seq_len: the {family} tasks need {longest} tokens per example, "
                              f"seq_len is {seq_len}; raise it to at least {longest}.")
        windows[split] = to_windows(examples, seq_len, False, tokenizer.pad_token_id)
    return TaskData(*windows["train"], *windows["validation"])


def pretrain_text(record: dict[str, Any]) -> str:
    """How pre-training shows a task example: the fine-tuning's plain format (without the adapt regime's style)."""
    return f"{record['instruction']}\n{record['input']}\n{record['output']}"


def pretrain_stream(family: str = "strings", regime: str = "learn") -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-training text: Python source, and task examples packed back to back (training inputs only). Learn: the
    copy and capitals string tasks; adapt: every task of ``family``."""
    tokenizer = ByteTokenizer()
    if regime == "adapt":
        records = family_records(family, "train")
    else:
        records = [r for r in family_records("strings", "train") if r["instruction"] in PRETRAIN_TASKS]
    ids: list[int] = []
    for r in records:
        ids += tokenizer.encode(pretrain_text(r)) + [tokenizer.eos_token_id]
    return stdlib_corpus(1_000_000), torch.tensor(ids)


def pretrain_description(settings: RegimeSettings) -> str:
    """What the pre-training saw, for the report."""
    if settings.regime == "adapt":
        return (f"Python standard-library source and every {settings.family} task (training inputs; answers "
                f"without the fine-tuning's style, a final '{ADAPT_STYLE}'), alternating")
    return "Python standard-library source and the copy/capitals string tasks (training words), alternating"


def _pretrained_state(settings: RegimeSettings, backend: Backend,
                      progress: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The pre-trained base weights, from the cache when the same settings were pre-trained before."""
    described = {"model": settings.model_overrides, "steps": settings.pretrain_steps, "lr": settings.pretrain_lr,
                 "seq": settings.seq_len, "batch": settings.batch_size}
    if settings.regime == "adapt":  # the learn regime's pre-training is the same for both families
        described |= {"regime": "adapt", "family": settings.family}

    def pretrain(model: torch.nn.Module) -> dict[str, Any]:
        text, tasks = pretrain_stream(settings.family, settings.regime)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.pretrain_lr)
        runner = StepRunner(model.train(), backend, optimizer,
                            scheduler=lr_scheduler(optimizer, 50, settings.pretrain_steps, "cosine"))
        losses: list[float] = []
        start = time.perf_counter()
        bar = progress_bar(range(settings.pretrain_steps), desc="pre-train (cached afterwards)", enabled=progress)
        for step in bar:
            source = tasks if step % 2 else text
            batch = batch_at(source, step, settings.batch_size, settings.seq_len * 2, seed=7)
            losses.append(runner.step(step, [batch]).loss)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        tenth = max(1, len(losses) // 10)
        return {"pretrain_steps": settings.pretrain_steps, "pretrain_time_s": time.perf_counter() - start,
                "loss_last_tenth": statistics.fmean(losses[-tenth:]),
                "loss_previous_tenth": statistics.fmean(losses[-2 * tenth:-tenth]),
                "data": pretrain_description(settings)}

    model = build_model("tiny", seed=1234, **settings.model_overrides)
    return cached_pretraining("regime-pretrained", described, model, pretrain)


def train_run(contender: Contender, lr: float, seed: int, settings: RegimeSettings, state: dict[str, torch.Tensor],
              data: TaskData, backend: Backend, progress: bool, epochs: float | None = None) -> RegimeRun:
    """One fine-tuning run of one contender (``epochs`` passes, default the settings'); returns its curve and
    summary (its time measured by the step clock; the study replaces it by the step-time model's)."""
    epochs = settings.epochs if epochs is None else epochs
    total = max(1, round(epochs * len(data.train_ids) / settings.batch_size))
    trainer = prepare(contender, lr, seed, settings, state, backend, total)
    order = torch.randperm(len(data.train_ids), generator=torch.Generator().manual_seed(seed))
    loss0, acc0 = teacher_forced_exact_match(trainer.model, data.val_ids, data.val_labels)
    curve = [CurvePoint(step=0, examples=0, time_s=0.0, flops=0.0, val_loss=loss0, exact_match=acc0)]
    elapsed = flops = 0.0
    clock, _ = step_clock(backend)
    bar = progress_bar(range(total), desc=f"{contender.label} lr={lr:g} seed={seed}", enabled=progress)
    for step in bar:
        index = batch_indices(order, step, settings.batch_size)
        backend.synchronize()
        start = clock()
        _, step_flops = trainer.step(step, data.train_ids[index], data.train_labels[index])
        backend.synchronize()
        elapsed += clock() - start
        flops += step_flops
        if (step + 1) % settings.eval_every == 0 or step + 1 == total:
            val_loss, accuracy = teacher_forced_exact_match(trainer.model, data.val_ids, data.val_labels)
            curve.append(CurvePoint(step=step + 1, examples=(step + 1) * settings.batch_size, time_s=elapsed,
                                    flops=flops, val_loss=val_loss, exact_match=accuracy))
            bar.set_postfix(val=f"{val_loss:.3f}", em=f"{accuracy:.2f}")
    bar.close()
    realized = trainer.close()
    return RegimeRun(label=contender.label, steps=total, train_time_s=elapsed, train_flops=flops, curve=curve,
                     realized_drop_fraction=realized, family=contender.family, rate=contender.rate, lr=lr, seed=seed,
                     epochs=epochs)


def runs_key(settings: RegimeSettings, backend: Backend) -> str:
    """The cache folder's key: every setting but the results folder and the list of contenders (a run's own key
    names its contender, so a study of fewer contenders reuses the runs it shares with a larger one), the device
    and the threads a run actually uses (every wall time depends on them). :data:`UNKEYED_SETTINGS` are left out
    altogether (not even as None), so adding one keeps every run cached before it."""
    described = {k: v for k, v in settings.to_dict().items() if k not in UNKEYED_SETTINGS}
    return cache_key({**described, "out": None, "contenders": None, "device": backend.name,
                      "torch_threads": torch.get_num_threads()})


#: Settings that change how finished runs are read, or only choose which contenders run (each run's own key names
#: its contender in full: family, rate, schedule), not what any run trains: not part of the run cache's key.
UNKEYED_SETTINGS = ("time_model", "equal_time", "drop_rates", "schedules")


def _cached_run(folder: Path, contender: Contender, lr: float, seed: int, *args: Any,
                epochs: float | None = None) -> RegimeRun:
    key = f"{contender}|{lr!r}|{seed}" + ("" if epochs is None else f"|epochs={epochs!r}")
    path = folder / f"run-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.exists():
        return RegimeRun.from_dict(json.loads(path.read_text()))
    run = train_run(contender, lr, seed, *args, epochs=epochs)
    write_text_atomic(path, json.dumps(run.to_dict()))
    return run


def run_regime(settings: RegimeSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Pre-train (or load), sweep learning rates, run the seeds; return the result (``main`` publishes it)."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    with seeded(settings.seed):
        state, pretrain_info = _pretrained_state(settings, backend, progress)
    data = task_data(settings.seq_len, settings.family, settings.regime)
    total = max(1, round(settings.epochs * len(data.train_ids) / settings.batch_size))
    contenders = plan(settings, settings.model_overrides["num_hidden_layers"], total)
    folder = cache_dir() / f"regime-runs-{runs_key(settings, backend)}"
    args = (settings, state, data, backend, progress)
    sweep: dict[str, list[RegimeRun]] = {}
    for contender in contenders:
        sweep[contender.label] = [_cached_run(folder, contender, lr, settings.seeds[0], *args) for lr in settings.lrs]
    chosen = {label: min(runs, key=lambda r: r.final_val_loss).lr for label, runs in sweep.items()}
    runs: list[RegimeRun] = []
    for contender in contenders:
        for seed in settings.seeds:
            runs.append(_cached_run(folder, contender, chosen[contender.label], seed, *args))
    time_model = None
    if settings.time_model:
        time_model = cached_calibration(folder, settings, state, data, backend, total)
        runs = [modelled(r, time_model) for r in runs]  # the sweep reports final losses only: left as it is
    equal_time: list[RegimeRun] = []
    if settings.equal_time:
        base_time = statistics.fmean(r.train_time_s for r in runs if r.family == "baseline")
        for contender in contenders[1:]:
            own = statistics.fmean(r.train_time_s for r in runs if r.label == contender.label)
            epochs = round(settings.epochs * base_time / own, 2)
            if epochs <= settings.epochs * 1.05:
                continue  # no faster than the baseline: nothing to add
            longer = [_cached_run(folder, contender, chosen[contender.label], seed, *args, epochs=epochs)
                      for seed in settings.seeds]
            equal_time += [modelled(r, time_model) for r in longer] if time_model else longer
    rows = summarise(runs, contenders, equal_time)
    return {"benchmark": "convergence-regime", **environment(backend), "settings": settings.to_dict(),
            "model": dict(settings.model_overrides), "method": settings.method, "pretrain": pretrain_info,
            "train_examples": len(data.train_ids), "validation_examples": len(data.val_ids), "steps_per_run": total,
            "sweep": {label: [{"lr": r.lr, "final_val_loss": r.final_val_loss,
                               "final_exact_match": r.final_exact_match} for r in runs]
                      for label, runs in sweep.items()},
            "clock": clock_description(backend, time_model),
            "step_time_model": None if time_model is None else time_model.to_dict(), "chosen_lr": chosen,
            "summary": rows, "runs": [r.to_dict() for r in runs],
            "equal_time_runs": [r.to_dict() for r in equal_time], "cache": str(folder),
            "total_time_s": time.perf_counter() - started, "paper_reference": PAPER_CONVERGENCE}
