"""The fine-tuning run of a recipe: ``setup`` -> ``train`` -> ``cleanup``, one readable class.

This is a *driver*: it owns the backward and the device's step boundaries (through the backend), the optimizer and
schedule, evaluation, logging and checkpoints; DropBP only draws each step's mask. Outputs in the run folder:
``recipe.yaml`` (the resolved recipe), ``metrics.csv``, TensorBoard logs (when tensorboard is installed),
``loss.png``, and ``checkpoints/``. ``--resume`` continues from the newest checkpoint and reproduces the
uninterrupted run: masks are keyed on (seed, step), the data order on (seed, window), and the weights, optimizer,
schedule and generators are restored.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropbp import backends
from dropbp.core.engine import DropBP
from dropbp.core.errors import ConfigError
from dropbp.core.policy import StepPolicy
from dropbp.core.progress import progress_bar
from dropbp.core.step_flops import StepFlops
from dropbp.core.assembly import build_technique
from dropbp.core.techniques import Technique
from dropbp.recipes.config.loader import dump_yaml
from dropbp.recipes.config.options import resolve_sampler
from dropbp.recipes.config.presets import PRESETS, downloads_allowed
from dropbp.recipes.config.schema import Recipe
from dropbp.recipes.data.instruct import RecipeData, load_data, render
from dropbp.recipes.model.build import build_recipe_model, enable_checkpointing, model_vocab_size
from dropbp.recipes.data.tokenizers import Tokenizer, load_tokenizer
from dropbp.recipes.report.plots import plot_training_curve
from dropbp.recipes.report.publish import append_line, write_text_atomic
from dropbp.recipes.report.savings import savings_line
from dropbp.recipes.training.checkpoint import ALLOCATION_KEY, POLICY_KEY, load_checkpoint, save_checkpoint
from dropbp.recipes.training.divergence import DivergenceGuard, TrainingDiverged
from dropbp.recipes.training.distributed import World, join, world_from_environment
from dropbp.recipes.training.evaluation import greedy_exact_match, validation_loss
from dropbp.recipes.training.optim import build_optimizer, lr_scheduler
from dropbp.recipes.training.rates import technique_spec
from dropbp.recipes.training.run_folder import (DATA_KEY, check_run_folder, check_same_data, resume_point,
                                                resumed_step, trim_masks_log)
from dropbp.recipes.training.run_lock import RunLock
from dropbp.recipes.training.labelled_head import choose_loss, head_fraction
from dropbp.recipes.training.step import LossFn, StepRunner
from dropbp.recipes.training.stop_signals import StopSignals

METRICS = ("step", "loss", "lr", "tokens_per_s", "realized_drop_fraction", "val_loss", "val_ppl", "exact_match")


class FineTune:
    """One run of a recipe in ``output_dir``."""

    def __init__(self, recipe: Recipe, output_dir: Path, *, resume: bool = False, progress: bool = True,
                 allow_changed_data: bool = False) -> None:
        self.recipe, self.out, self.resume, self.progress = recipe, Path(output_dir), resume, progress
        self.allow_changed_data = allow_changed_data
        self.backend_class = backends.resolve(recipe.device)
        self.world: World = world_from_environment()
        if self.world.size > 1 and recipe.dropbp.drop_rate > 0 and recipe.dropbp.allocation in ("sensitivity",
                                                                                          "online"):
            raise ConfigError(f"dropbp.allocation {recipe.dropbp.allocation} is not supported with several ranks yet "
                              "(the measurement's extra backward passes break DDP's gradient reduction; online ones "
                              "would differ per rank); use uniform, or auto (uniform rates with several ranks).")
        self.lock = RunLock(self.out) if self.world.is_main else None
        if self.lock is not None:
            self.lock.acquire()
        try:
            check_run_folder(recipe, self.out, resume, self.world.is_main)
        except BaseException:
            self.release()
            raise
        self.signals: StopSignals | None = None
        self.clock: Callable[[], float] = time.perf_counter  # times each step (a benchmark may pass CPU time)
        self.step_times: list[float] = []  # seconds of each training step run by train(), evaluation left out

    def release(self) -> None:
        """Let go of the run folder's lock (a second run may start there)."""
        if self.lock is not None:
            self.lock.release()

    # -- setup ---------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Build everything; nothing is written before this succeeds (on failure the folder's lock is released)."""
        try:
            self._setup()
        except BaseException:
            self.release()
            raise

    def _setup(self) -> None:
        recipe = self.recipe
        self.backend = self.backend_class()
        self.backend.bind_local_rank(self.world.local_rank)
        join(self.world, self.backend_class)
        self.weights_dtype, self.autocast = self.backend.precision_dtypes(recipe.train.precision)
        spec = recipe.model
        if spec.trust_remote_code:  # said before the tokenizer or the model can run any of it
            print(f"model.trust_remote_code is on: code shipped with {spec.name} will run.", flush=True)
        self.tokenizer: Tokenizer = load_tokenizer(spec.tokenizer, spec.source, is_preset=spec.name in PRESETS,
                                                   local_only=not downloads_allowed(),
                                                   trust_remote_code=spec.trust_remote_code)
        vocab = model_vocab_size(spec)
        if vocab is not None and self.tokenizer.vocab_size > vocab:
            raise ConfigError(f"model.tokenizer has {self.tokenizer.vocab_size} ids but the model's vocabulary has "
                              f"{vocab}: they do not belong together. Use the model's own tokenizer (auto).")
        self.data: RecipeData = load_data(recipe.data, recipe.base_dir, self.tokenizer, recipe.train.seed)
        per_step = recipe.train.micro_batch_size * recipe.train.grad_accum
        self.total_steps = recipe.train.steps or max(1, math.ceil(recipe.train.epochs * len(self.data.train_ids)
                                                                   / per_step))
        self.model: nn.Module = build_recipe_model(spec, self.backend, self.weights_dtype, recipe.train.seed)
        if recipe.train.gradient_checkpointing:
            enable_checkpointing(self.model, reentrant=recipe.train.checkpointing_reentrant)
        self.loss_fn: LossFn = choose_loss(recipe.train.head_positions, self.model, self.data.train_ids,
                                           self.data.train_labels)
        self.forward_model: nn.Module = self.model  # the DDP wrapper with several ranks
        asked = technique_spec(recipe.dropbp, sampler=resolve_sampler(recipe.dropbp.sampler, self.backend),
                              total_steps=self.total_steps, seq_len=recipe.data.seq_len,
                              options=recipe.technique_options(), ranks=self.world.size)
        self.technique: Technique | None = build_technique(self.model, asked, total_steps=self.total_steps,
                                                           seed=recipe.masks_seed(), option_prefix="technique.")
        if self.world.size > 1:  # after DropBP: its hooks sit on the inner model; dropped branches are unused
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(self.model, find_unused_parameters=True)
        self.optimizer = build_optimizer(self.model, recipe.optim)
        self.lr_scheduler = lr_scheduler(self.optimizer, recipe.optim.warmup_steps, self.total_steps,
                                      recipe.optim.lr_schedule)
        scaler = torch.amp.GradScaler(self.backend.device.type) if self.autocast == torch.float16 else None
        self.runner = StepRunner(self.forward_model, self.backend, self.optimizer, self.policy, self.autocast, scaler,
                                 recipe.optim.max_grad_norm, self.lr_scheduler, self.loss_fn)
        self.start_step = 0
        self.rows: list[dict[str, Any]] = []
        if self.resume:
            self._restore()
        self.writer = None
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.world.is_main:
            return
        header = (f"# resolved recipe of this run; resume with dropbp train {self.out / 'recipe.yaml'} "
                  f"--output-dir {self.out} --resume\n")
        write_text_atomic(self.out / "recipe.yaml", header + dump_yaml(self._saved_recipe()))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:
            pass

    @property
    def policy(self) -> StepPolicy | None:
        """What draws each step's mask (DropBP, LayerDrop or PLD); None without one (baseline, freezing)."""
        return None if self.technique is None else self.technique.policy

    @property
    def dropbp(self) -> DropBP | None:
        """The DropBP engine, when the technique is DropBP (its rates are allocated and checkpointed)."""
        return self.policy if isinstance(self.policy, DropBP) else None

    def _saved_recipe(self) -> dict[str, Any]:
        """The recipe as ``recipe.yaml`` keeps it: data paths absolute, no stop point (resuming runs to the end)."""
        recipe = self.recipe.with_absolute_paths()
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, stop_after_steps=None))
        return recipe.to_data()

    @functools.cached_property
    def flops_model(self) -> StepFlops:
        """Training FLOPs per step (a backward: two forwards in full, one with adapters), made on first use."""
        head = head_fraction(self.loss_fn, self.data.train_labels)
        return StepFlops(self.model, self.recipe.data.seq_len, 2.0 if self.recipe.model.method == "full" else 1.0, head)

    def _stateful(self) -> dict[str, Any]:
        """The run's parts that own state beyond weights, optimizer and schedule, by checkpoint key."""
        return {POLICY_KEY: self.policy, ALLOCATION_KEY: self.technique and self.technique.allocation}

    def _restore(self) -> None:
        """Continue from the newest intact checkpoint (none yet: from step 0)."""
        folder = resume_point(self.out, self.world.is_main)
        if folder is not None:
            state = load_checkpoint(folder, self.model, self.optimizer, self.lr_scheduler, self.backend.set_rng_state)
            self.start_step = resumed_step(folder, state, self.total_steps)
            check_same_data(state.get(DATA_KEY), self.data.fingerprint(), self.allow_changed_data)
            for key, owner in self._stateful().items():
                if owner is not None:
                    owner.load_state_dict(state[key])
            with open(self.out / "metrics.csv", newline="", encoding="utf-8") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= self.start_step]
            print(f"resumed from {folder} (step {self.start_step} of {self.total_steps})")
        if self.recipe.train.log_masks:
            trim_masks_log(self._masks_log, self.start_step)

    # -- evaluation ----------------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        return self.backend.autocast(self.autocast)

    def validation_loss(self) -> float:
        """Token-weighted mean loss over the validation windows (eval mode: nothing dropped)."""
        return validation_loss(self.model, self.data.val_ids, self.data.val_labels, self.recipe.train.micro_batch_size,
                               self.backend.device, self._autocast, self.recipe.train.eval_batches, self.loss_fn)

    def exact_match(self) -> float | None:
        """Share of held-out prompts whose greedy answer equals the reference answer exactly (None when off)."""
        n = self.recipe.train.exact_match
        if n == 0 or self.recipe.data.format != "alpaca":
            return None
        pairs = [render(record, self.recipe.data, self.tokenizer, "data.validation")
                 for record in self.data.val_records[:n]]
        prompts = [self.tokenizer.start_ids + self.tokenizer.encode(prompt) for prompt, _ in pairs]
        return greedy_exact_match(self.model, prompts,
                                  [answer for _, answer in pairs], self.tokenizer.decode,
                                  self.tokenizer.eos_token_id, seq_len=self.recipe.data.seq_len,
                                  max_new_tokens=self.recipe.train.max_new_tokens, device=self.backend.device,
                                  autocast=self._autocast)

    # -- training ------------------------------------------------------------------------------------------------
    def _batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches of optimizer step ``step``, on the device."""
        train, world, device = self.recipe.train, self.world, self.backend.device
        return [tuple(t.to(device) for t in self.data.batch(step, micro, train.grad_accum, train.micro_batch_size,
                                                              world.rank, world.size))
                for micro in range(train.grad_accum)]

    def _before_step(self, step: int, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The technique's work before the step (allocation by sensitivity, measured on the recipe's labels); every
        rank measures on rank 0's first micro-batch."""
        if self.technique is None:
            return
        train, world = self.recipe.train, self.world
        ids, labels = batches[0] if world.rank == 0 else self.data.batch(step, 0, train.grad_accum,
                                                                         train.micro_batch_size, 0, world.size)
        device = self.backend.device
        self.technique.before_step(step, {"input_ids": ids.to(device), "labels": labels.to(device)})

    def _log_mask(self, step: int) -> None:
        if self.recipe.train.log_masks and self.policy is not None:
            append_line(self._masks_log, f"{step},{''.join('1' if m else '0' for m in self.policy.mask)}\n")

    @property
    def _masks_log(self) -> Path:
        return self.out / f"masks-rank{self.world.rank}.csv"

    def _checkpoint(self, step: int) -> Path | None:
        state: dict[str, Any] = {"total_steps": self.total_steps, DATA_KEY: self.data.fingerprint()}
        state.update({key: owner.state_dict() for key, owner in self._stateful().items() if owner is not None})
        folder = None
        if self.world.is_main:
            folder = save_checkpoint(self.out / "checkpoints", step, self.model, self.optimizer, self.lr_scheduler,
                                     state, self.recipe.train.keep_checkpoints, self.backend.rng_state())
        self.world.barrier()
        return folder

    def _write_metrics(self) -> None:
        if not self.world.is_main:
            return
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.out / "metrics.csv", text.getvalue())

    def _evaluate(self, step: int, row: dict[str, Any]) -> None:
        val = self.validation_loss()
        row["val_loss"] = repr(val)
        row["val_ppl"] = repr(math.exp(min(val, 50.0)))
        match = self.exact_match()
        row["exact_match"] = "" if match is None else repr(match)
        if self.writer is not None:
            self.writer.add_scalar("val/loss", val, step)
            if match is not None:
                self.writer.add_scalar("val/exact_match", match, step)

    def train(self) -> dict[str, Any]:
        """Train from ``start_step`` to the end (or to ``stop_after_steps``); returns a summary."""
        train = self.recipe.train
        stop = self.total_steps if train.stop_after_steps is None else min(self.total_steps, train.stop_after_steps)
        if self.start_step == 0 and not self.rows:
            row = {key: "" for key in METRICS}
            row.update(step=0)
            self._evaluate(0, row)
            self.rows.append(row)
        self.model.train()
        engine = self.technique.describe() if self.technique is not None else "DropBP off"
        ranks = f" x {self.world.size} ranks" if self.world.size > 1 else ""
        if self.world.is_main:
            print(f"training {self.recipe.name}: {self.recipe.model.name} ({self.recipe.model.method}), {engine}, "
                  f"on {self.backend.device_name()} ({self.backend.name}){ranks}; steps {self.start_step} -> {stop} "
                  f"of {self.total_steps}", flush=True)
        guard = DivergenceGuard(train.divergence_factor)
        interrupted = ""
        bar = progress_bar(range(self.start_step, stop), desc=f"train {self.recipe.name}",
                           enabled=self.progress and self.world.is_main,
                           initial=self.start_step, total=self.total_steps)
        for step in bar:
            start = self.clock()
            batches = self._batches(step)
            self._before_step(step, batches)
            lr = self.optimizer.param_groups[0]["lr"]
            result = self.runner.step(step, batches)
            self._log_mask(step)
            self.backend.synchronize()
            self.step_times.append(self.clock() - start)
            speed = result.tokens * self.world.size / max(self.step_times[-1], 1e-9)
            done = step + 1
            loss = self.world.mean(result.loss, self.backend.device)
            try:
                guard.check(done, loss)
            except TrainingDiverged:
                bar.close()
                self._write_metrics()
                raise
            drop = self.policy.realized_drop_fraction() if self.policy is not None else 0.0
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:.0f}", drop=f"{drop:.2f}")
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, done)
                self.writer.add_scalar("train/lr", lr, done)
            evaluate = done == self.total_steps or (train.eval_every and done % train.eval_every == 0)
            if done % train.log_every == 0 or evaluate:
                row = {key: "" for key in METRICS}
                row.update(step=done, loss=repr(loss), lr=repr(lr), tokens_per_s=f"{speed:.1f}",
                           realized_drop_fraction=repr(drop))
                if evaluate:
                    self._evaluate(done, row)
                self.rows.append(row)
                self._write_metrics()
            saved = done == stop or (train.save_every and done % train.save_every == 0)
            if self._stop_requested():
                interrupted, stop = self.signals.name if self.signals is not None else "a signal", done
                saved = True
            if saved:
                self._write_metrics()
                self._checkpoint(done)
            if interrupted:
                break
        bar.close()
        self._write_metrics()
        return {"steps": stop, "total_steps": self.total_steps, "rows": self.rows,
                "finished": stop == self.total_steps, "interrupted": interrupted, "savings": self.savings()}

    def _stop_requested(self) -> bool:
        """Whether SIGINT or SIGTERM arrived (on any rank: every rank stops at the same step)."""
        received = float(self.signals is not None and self.signals.received is not None)
        if self.world.size > 1:
            received = self.world.mean(received, self.backend.device)
        return received > 0

    def savings(self) -> str:
        """One line on what the technique dropped so far and the training FLOPs that saves (see
        :func:`~dropbp.recipes.report.savings.savings_line`)."""
        if self.technique is None:
            return "DropBP off: exact backprop on every branch."
        return savings_line(self.technique, self.flops_model)

    def cleanup(self) -> None:
        """Close the logs, draw ``loss.png``, detach the engine, release the run folder."""
        if self.writer is not None:
            self.writer.close()
        if self.technique is not None:
            self.technique.remove()
        if self.world.is_main:
            self.plot()
        self.world.close()
        self.release()

    def plot(self) -> Path:
        """``loss.png``: training and validation loss against step (and exact match, when measured)."""
        return plot_training_curve(self.rows, f"{self.recipe.name}: {self.recipe.model.method}, drop rate "
                                              f"{self.recipe.dropbp.drop_rate}", self.out / "loss.png")
