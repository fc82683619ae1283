"""Running the regime benchmark: the task data, pre-training (cached), and the workload the one study runner trains
(each run cached as JSON, so an interrupted study continues where it stopped)."""
from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.core.progress import progress_bar
from dropbp.core.errors import ConfigError
from dropbp.core.seeding import seeded
from dropbp.recipes.for_benchmarks import (ByteTokenizer, DataSection, StepRunner, apply_method, batch_at,
                                           build_model, environment, family_folder, load_records, lr_scheduler,
                                           quantize_4bit, stdlib_corpus, teacher_forced_exact_match, to_windows,
                                           tokenize)

from ..harness import cached_pretraining, digest, runs_folder, step_clock, with_versions
from ..paper import PAPER_CONVERGENCE
from ..step_time_model import StepTimeModel
from ..study import (Contender, ContenderTrainer, StudyRun, Timer, contender_trainer, run_study, study_dict,
                     train_contender, trainer_timer)
from .report import summarise
from .settings import CONTENDER_KINDS, RegimeSettings, plan

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


def pretrained_state(settings: RegimeSettings, backend: Backend,
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


@dataclass
class TaskWorkload:
    """The regime study's workload: the pre-trained tiny model with LoRA (or QLoRA) fine-tuned on a task family,
    validated (loss and exact match) every ``eval_every`` steps."""

    settings: RegimeSettings
    state: dict[str, torch.Tensor]
    data: TaskData
    backend: Backend

    def trainer(self, contender: Contender, lr: float, seed: int, total: int) -> ContenderTrainer:
        """The pre-trained model with adapters and ``contender``'s technique over ``total`` steps, AdamW with the
        study's warm-up and cosine decay."""
        settings = self.settings
        model = build_model("tiny", seed=1234, **settings.model_overrides)
        model.load_state_dict(self.state, strict=False)
        if settings.method == "qlora":
            model = quantize_4bit(model, self.backend)
        model = apply_method(model, "lora", lora_rank=settings.lora_rank, seed=seed)
        return contender_trainer(model, contender, lr, self.backend, total_steps=total, seq_len=settings.seq_len,
                                 seed=seed, warmup_steps=settings.warmup_steps)

    def _batch(self, order: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = batch_indices(order, step, self.settings.batch_size)
        return self.data.train_ids[index], self.data.train_labels[index]

    def train(self, contender: Contender, lr: float | None, seed: int, steps: int, *, progress: bool) -> StudyRun:
        """One fine-tuning run of ``contender`` for ``steps`` steps; its curve timed by the step clock."""
        settings, data = self.settings, self.data
        order = torch.randperm(len(data.train_ids), generator=torch.Generator().manual_seed(seed))
        return train_contender(self.trainer(contender, float(lr), seed, steps), contender, lr=float(lr), seed=seed,
                               steps=steps, batch=lambda step: self._batch(order, step),
                               evaluate=lambda model: teacher_forced_exact_match(model, data.val_ids, data.val_labels),
                               eval_every=settings.eval_every, backend=self.backend, progress=progress,
                               examples_per_step=settings.batch_size,
                               notes=lambda trainer: {"epochs": steps * settings.batch_size / len(data.train_ids)})

    def timer(self, contender: Contender) -> Timer:
        """Steps of ``contender`` (seed 0, the sweep's middle learning rate) for the study's clock."""
        lrs = sorted(self.settings.lrs)
        trainer = self.trainer(contender, lrs[len(lrs) // 2], 0, steps_per_run(self.settings, self.data))
        order = torch.randperm(len(self.data.train_ids), generator=torch.Generator().manual_seed(0))
        return trainer_timer(trainer, lambda step: self._batch(order, step), self.backend)


def batch_indices(order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """The training examples of ``step``: the next ``batch_size`` of the seed's shuffled order, wrapping around."""
    start = step * batch_size
    return torch.tensor([int(order[(start + k) % len(order)]) for k in range(batch_size)])


def steps_per_run(settings: RegimeSettings, data: TaskData) -> int:
    """Optimizer steps of one run at equal epochs."""
    return max(1, round(settings.epochs * len(data.train_ids) / settings.batch_size))


def runs_described(settings: RegimeSettings, backend: Backend) -> dict[str, Any]:
    """What the cached runs depend on: every setting but the results folder and the list of contenders (a run's own
    key names its contender in full, so a study of fewer contenders reuses the runs it shares with a larger one),
    the device and the threads a run actually uses (every wall time depends on them), the Python and torch versions.
    :data:`UNKEYED_SETTINGS` are left out altogether (not even as None), so adding one keeps every run cached
    before it."""
    described = {k: v for k, v in settings.to_dict().items() if k not in UNKEYED_SETTINGS}
    return with_versions({**described, "out": None, "contenders": None, "device": backend.name,
                          "torch_threads": torch.get_num_threads(), "runner": "study"})


def runs_key(settings: RegimeSettings, backend: Backend) -> str:
    """The key of the regime study's folder of finished runs (:func:`runs_described`)."""
    return digest(runs_described(settings, backend))


#: Settings that change how finished runs are read, or only choose which contenders run (each run's own key names
#: its contender in full), not what any run trains: not part of the run cache's key.
UNKEYED_SETTINGS = ("time_model", "equal_time", "drop_rates", "schedules")


def clock_description(backend: Backend, time_model: StepTimeModel | None) -> str:
    """How the study's times were taken, for the report."""
    measured = step_clock(backend)[1]
    if time_model is None:
        return measured
    return (f"step-time model's ({time_model.formula()}, fitted to {len(time_model.points)} configurations timed "
            f"in interleaved rounds by the {measured}; worst fit error {time_model.worst_error() * 100:.1f}%)")


def run_regime(settings: RegimeSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Pre-train (or load), sweep learning rates, run the seeds, then at the baseline's time, through the one study
    runner; return the result (``main`` publishes it)."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    with seeded(settings.seed):
        state, pretrain_info = pretrained_state(settings, backend, progress)
    data = task_data(settings.seq_len, settings.family, settings.regime)
    total = steps_per_run(settings, data)
    layers = settings.model_overrides["num_hidden_layers"]
    contenders = plan(settings, layers, total)
    every = plan(dataclasses.replace(settings, contenders=CONTENDER_KINDS), layers, total)  # one clock for any subset
    folder = runs_folder("regime", runs_described(settings, backend))
    study = run_study(TaskWorkload(settings, state, data, backend), contenders, steps=total, seeds=settings.seeds,
                      **settings.runner_options(), timed=every, cache=folder, progress=progress)
    return {"benchmark": "convergence-regime", **environment(backend), "settings": settings.to_dict(),
            "model": dict(settings.model_overrides), "method": settings.method, "pretrain": pretrain_info,
            "train_examples": len(data.train_ids), "validation_examples": len(data.val_ids), "steps_per_run": total,
            **study_dict(study), "clock": clock_description(backend, study.time_model),
            "summary": summarise(study), "cache": str(folder), "total_time_s": time.perf_counter() - started,
            "paper_reference": PAPER_CONVERGENCE}
