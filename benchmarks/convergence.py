"""Convergence benchmark: validation loss against training FLOPs and wall time, baseline vs DropBP, on real text.

The text is the Python standard library's own source (read at run time, never committed), as byte tokens. Like the
paper's setting, a tiny Llama is first pre-trained on one part of the corpus (cached on disk), then fine-tuned on
another part and validated on held-out text. The baseline runs a fixed number of steps; each DropBP run gets the
same training time (so it may take more, cheaper steps), by the one study runner's clock and equal-time rule, which is
what "time to reach the baseline's final validation loss" compares.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.core.progress import progress_bar
from dropbp.recipes.for_benchmarks import (POSITIVE, POSITIVE_NUMBER, RATE, VOCAB_SIZE, Naming, Problems, StepRunner,
                                           apply_method, batch_at, batch_size_field, build_model, drop_rates_field,
                                           environment, lr_field, markdown_table, method_field, model_field,
                                           model_overrides_field, option_name, pool_size_field, pyplot, seq_len_field,
                                           setting, split_corpus, stdlib_corpus, steps_field)

from .harness import STEP_FACTOR, StudySettings, cached_pretraining, run_benchmark, time_to
from .paper import PAPER_CONVERGENCE
from .study import (Contender, ContenderTrainer, StudyRun, Timer, Verdict, contender_trainer, run_study,
                    train_contender, trainer_timer)

MODEL_OVERRIDES = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=2,
                       vocab_size=VOCAB_SIZE)


@dataclass
class ConvergenceSettings(StudySettings):
    """What a convergence run depends on; :meth:`validate` checks it before any work starts."""

    model: str = model_field("tiny")
    method: str = method_field("full", ("full", "lora"))
    drop_rates: tuple[float, ...] = drop_rates_field()
    compare_pool_at: float | None = setting(0.875, "also run this rate with the pool sampler (none: skip)",
                                            allowed=RATE.described(f"{RATE}, or none"))
    sensitivity_at: float | None = setting(0.875, "also run this rate with sensitivity-based rates (none: skip)",
                                           allowed=RATE.described(f"{RATE}, or none"))
    sensitivity_allocators: tuple[str, ...] = setting(("paper", "optimal"), "allocators for the sensitivity runs, "
                                                                            "comma-separated (paper, optimal)",
                                                      choices=("paper", "optimal"),
                                                      allowed="comma-separated, each paper or optimal")
    pretrain_steps: int = setting(300, "pre-training steps of the base model (cached on disk afterwards)",
                                  allowed=POSITIVE)
    steps: int = steps_field(150, "fine-tuning steps of the baseline; DropBP runs get its time")
    max_step_factor: float | None = setting(3.0, "a DropBP run stops after this many times the baseline's steps "
                                                 "(none: no limit)", allowed=STEP_FACTOR)
    batch_size: int = batch_size_field(8)
    seq_len: int = seq_len_field(128, "tokens per sequence")
    lr: float = lr_field(1e-3, "AdamW learning rate of fine-tuning (when lrs sweeps none)")
    pretrain_lr: float = setting(3e-3, "AdamW learning rate of pre-training", allowed=POSITIVE_NUMBER)
    eval_every: int = setting(10, "steps between validation-loss evaluations", allowed=POSITIVE)
    eval_windows: int = setting(64, "held-out windows in the validation loss", allowed=POSITIVE)
    pool_size: int = pool_size_field()
    corpus_bytes: int = setting(3_000_000, "bytes of standard-library source read as text", allowed=POSITIVE)
    model_overrides: dict[str, Any] = model_overrides_field("tiny-model fields (width, heads, ...)", MODEL_OVERRIDES)

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        if self.model != "tiny":
            p.add(f"{name('model')}: bench convergence trains its own built-in tiny Llama (pre-trained here, then "
                  f"fine-tuned); only 'tiny' is allowed, got {self.model!r}.")


def _pretrained_base(settings: ConvergenceSettings, pretrain_tokens: torch.Tensor, backend: Backend,
                progress: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The pre-trained base weights, from the cache when the same settings were pre-trained before."""
    described = {"overrides": settings.model_overrides, "steps": settings.pretrain_steps, "seed": settings.seed,
                 "lr": settings.pretrain_lr, "batch": settings.batch_size, "seq": settings.seq_len,
                 "tokens": len(pretrain_tokens)}

    def pretrain(model: torch.nn.Module) -> dict[str, Any]:
        runner = StepRunner(model, backend, torch.optim.AdamW(model.parameters(), lr=settings.pretrain_lr))
        start = time.perf_counter()
        model.train()
        bar = progress_bar(range(settings.pretrain_steps), desc="pre-train (cached afterwards)", enabled=progress)
        for step in bar:
            batch = batch_at(pretrain_tokens, step, settings.batch_size, settings.seq_len, settings.seed + 1)
            loss = runner.step(step, [batch.to(backend.device)]).loss
            bar.set_postfix(loss=f"{loss:.3f}")
        return {"pretrain_steps": settings.pretrain_steps, "pretrain_time_s": time.perf_counter() - start,
                "pretrain_final_loss": loss}

    model = build_model("tiny", seed=settings.seed, device=backend.device, **settings.model_overrides)
    return cached_pretraining("convergence-pretrained", described, model, pretrain)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, windows: torch.Tensor, backend, batch_size: int) -> float:
    """Mean loss over fixed validation windows, in eval mode (nothing dropped)."""
    model.eval()
    losses = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size].to(backend.device)
        losses.append(float(model(input_ids=batch, labels=batch).loss))
    model.train()
    return sum(losses) / len(losses)


def contenders(settings: ConvergenceSettings) -> list[Contender]:
    """The baseline, uniform DropBP at each rate, the pool sampler and sensitivity-allocated rates where asked."""
    out = [Contender("baseline")]
    out += [Contender(f"dropbp p={r:g}", "dropbp", "dropbp", r) for r in settings.drop_rates]
    if settings.compare_pool_at is not None:
        rate = settings.compare_pool_at
        out.append(Contender(f"dropbp p={rate:g} pool", "dropbp", "dropbp", rate, sampler="pool"))
    if settings.sensitivity_at is not None:
        rate = settings.sensitivity_at
        out += [Contender(f"dropbp p={rate:g} sensitivity ({a})", "sensitivity", "dropbp", rate, allocation=a)
                for a in settings.sensitivity_allocators]
    return out


@dataclass
class TextWorkload:
    """The convergence study's workload: the pre-trained tiny model fine-tuned (full or LoRA) on text, validated on
    held-out windows every ``eval_every`` steps, at a constant learning rate."""

    settings: ConvergenceSettings
    state: dict[str, torch.Tensor]
    tokens: torch.Tensor
    windows: torch.Tensor
    backend: Backend

    def trainer(self, contender: Contender, lr: float, total: int) -> ContenderTrainer:
        """The pre-trained model with the method and ``contender``'s technique over ``total`` steps."""
        settings = self.settings
        model = build_model("tiny", seed=settings.seed, device=self.backend.device, **settings.model_overrides)
        model.load_state_dict(self.state, strict=False)  # a tied head is stored once, as the embedding
        model = apply_method(model, settings.method, seed=settings.seed)
        return contender_trainer(model, contender, lr, self.backend, total_steps=total, seq_len=settings.seq_len,
                                 seed=settings.seed, backward=2.0 if settings.method == "full" else 1.0,
                                 pool_size=settings.pool_size)

    def _batch(self, step: int) -> tuple[torch.Tensor, None]:
        s = self.settings
        return batch_at(self.tokens, step, s.batch_size, s.seq_len, s.seed + 2).to(self.backend.device), None

    def _evaluate(self, model: torch.nn.Module) -> tuple[float, None]:
        return validation_loss(model, self.windows, self.backend, 8), None

    def train(self, contender: Contender, lr: float | None, seed: int, steps: int, *, progress: bool) -> StudyRun:
        """One fine-tuning run of ``contender`` for ``steps`` steps; its curve timed by the step clock."""
        def notes(trainer: ContenderTrainer) -> dict[str, Any]:
            policy = None if trainer.technique is None else trainer.technique.policy
            return {} if contender.is_baseline else {"sampler": contender.sampler, "allocation": contender.allocation,
                                                     "rates": list(getattr(policy, "rates", []))}

        return train_contender(self.trainer(contender, float(lr), steps), contender, lr=float(lr), seed=seed,
                               steps=steps, batch=lambda step: (self._batch(step)[0], None), evaluate=self._evaluate,
                               eval_every=self.settings.eval_every, backend=self.backend, progress=progress,
                               notes=notes)

    def timer(self, contender: Contender) -> Timer:
        """Steps of ``contender`` for the study's clock."""
        return trainer_timer(self.trainer(contender, self.settings.lr, self.settings.steps), self._batch,
                             self.backend)


def run_convergence(settings: ConvergenceSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Pre-train (or load), then fine-tune the baseline and each DropBP configuration through the one study runner
    (each DropBP run trained again for the baseline's time); return the result (nothing is written; :func:`main`
    also publishes it)."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    total_start = time.perf_counter()
    pretrain, finetune, validation = split_corpus(stdlib_corpus(settings.corpus_bytes), (0.5, 0.4, 0.1))
    windows = torch.stack([batch_at(validation, i, 1, settings.seq_len, settings.seed + 3)[0]
                           for i in range(settings.eval_windows)])
    base_state, pretrain_info = _pretrained_base(settings, pretrain, backend, progress)
    workload = TextWorkload(settings, base_state, finetune, windows, backend)
    study = run_study(workload, contenders(settings), steps=settings.steps, seeds=(settings.seed,),
                      **{**settings.runner_options(), "lrs": settings.lrs or (settings.lr,)}, progress=progress)
    baseline = study.baseline(settings.seed)
    target = baseline.final_val_loss
    runs = []
    for run in study.equal_time_runs:
        verdict = Verdict.of(run, baseline)
        runs.append({**run.to_dict(), "drop_rate": None if run.kind == "baseline" else run.rate,
                     **run.notes, "best_val_loss": run.best_val_loss,
                     "time_to_target_s": time_to(run.curve, target, "time_s"),
                     "flops_to_target": time_to(run.curve, target, "flops"),
                     "time_to_target_speedup": 1.0 if run is baseline else verdict.loss_speedup})
    return {"benchmark": "convergence", **environment(backend), "model": "tiny", "method": settings.method,
            "settings": settings.to_dict(), "data": "Python standard library source (byte tokens): 50% pre-train, "
            "40% fine-tune, 10% validation", "pretrain": pretrain_info, "target_val_loss": target,
            "runs": runs, "equal_steps_runs": [r.to_dict() for r in study.runs],
            "step_time_model": None if study.time_model is None else study.time_model.to_dict(),
            "total_time_s": time.perf_counter() - total_start, "paper_reference": PAPER_CONVERGENCE}


def convergence_markdown(result: dict[str, Any]) -> str:
    """Table of final losses and time to the baseline's final validation loss."""
    rows = []
    for run in result["runs"]:
        speedup = run["time_to_target_speedup"]
        rows.append((run["label"], run["steps"], run["train_time_s"], run["train_flops"] / 1e12,
                     run["final_val_loss"], run["best_val_loss"],
                     "not reached" if run["time_to_target_s"] is None else f"{run['time_to_target_s']:.1f}",
                     None if speedup is None else f"{speedup:.2f}x"))
    paper = result["paper_reference"]
    s = result["settings"]
    return "\n".join([
        f"# Convergence: tiny Llama ({result['method']}) on {result['device_name']} ({result['device']})", "",
        f"{result['data']}. Pre-training: {result['pretrain']['pretrain_steps']} steps"
        f"{' (from cache)' if result['pretrain'].get('from_cache') else ''}. Fine-tuning: baseline {s['steps']} steps; "
        f"each DropBP run gets the baseline's wall-clock training time. Batch {s['batch_size']} x {s['seq_len']} "
        f"tokens, AdamW lr {s['lr']}. Target: the baseline's final validation loss "
        f"({result['target_val_loss']:.4f}).", "",
        markdown_table(["run", "steps", "train time (s)", "train TFLOPs", "final val loss", "best val loss",
                        "time to target (s)", "speed-up"], rows), "",
        f"Paper, for reference (not measured here): {paper['time_to_target_speedup']}x faster to the same accuracy "
        f"({paper['setting']}). Total benchmark time: {result['total_time_s']:.0f} s.",
    ])


def convergence_figure(result: dict[str, Any]) -> Any:
    """Validation loss against training FLOPs (left) and wall time (right)."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for run in result["runs"]:
        style = "k-" if run["drop_rate"] is None else ("--" if run["sampler"] == "pool" else
                                                         ":" if run.get("allocation") not in (None, "uniform") else "-")
        xs_flops = [p["flops"] / 1e12 for p in run["curve"]]
        xs_time = [p["time_s"] for p in run["curve"]]
        ys = [p["val_loss"] for p in run["curve"]]
        left.plot(xs_flops, ys, style, label=run["label"])
        right.plot(xs_time, ys, style, label=run["label"])
    for ax in (left, right):
        ax.axhline(result["target_val_loss"], color="grey", lw=0.8, ls=":")
    left.set_xlabel("training TFLOPs (FLOPs model)")
    right.set_xlabel("training wall time (s)")
    left.set_ylabel("validation loss")
    left.set_title("loss vs compute")
    right.set_title("loss vs time")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(settings: ConvergenceSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench convergence``: validate, train, write ``convergence.{json,md,png}``, print the table."""
    return run_benchmark("convergence", settings, run_convergence, convergence_markdown, convergence_figure,
                         progress=progress)
