"""Time to accuracy in the paper's regime: a deep pre-trained decoder fine-tuned with LoRA (or QLoRA) on an
instruction task, DropBP beside LayerDrop, Progressive Layer Dropping and layer freezing, each at its best learning
rate, over seeds.

1. **Pre-training** (cached): a deep, narrow Llama learns Python text and two of the four string tasks (copy and
   capitals), until its loss is flat.
2. **Learning-rate sweep** (seed 0): every contender at each rate of ``lrs``; the rate with the lowest final
   validation loss is chosen per contender.
3. **Seeds:** each contender at its chosen rate over ``seeds`` (seed 0 is the sweep's run).

Every run trains the same number of examples (``epochs`` over the training set, cosine learning rate), so the
table gives both of the paper's comparisons: *equal epochs* (time saved, accuracy gap) and *time to the baseline's
final validation loss* (read off each run's curve). Each finished run is cached as JSON, so an interrupted benchmark
continues where it stopped.
"""
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
from dropbp.core.errors import ConfigError
from dropbp.core.freezing import blocks_for_backward_budget
from dropbp.core.layerdrop import equal_flops_layerdrop_rate, pld_theta_for_drop
from dropbp.core.progress import progress_bar
from dropbp.core.schedule import AllocationSchedule
from dropbp.core.seeding import seeded
from dropbp.core.techniques import apply_technique
from dropbp.recipes.data.corpus import batch_at, stdlib_corpus
from dropbp.recipes.finetune import lr_factor
from dropbp.recipes.data.instruct import IGNORE, load_records, to_windows, tokenize
from dropbp.recipes.model.build import quantize_4bit
from dropbp.recipes.model.build import apply_method, build_model
from dropbp.recipes.report.publish import environment, pyplot, write_text_atomic
from dropbp.recipes.config.schema import DataSection
from dropbp.recipes.config.fields import (check_choice, check_drop_rates, check_non_negative, check_number,
                                            check_positive, check_seed, setting)
from dropbp.recipes.report.tables import markdown_table
from dropbp.recipes.model.tokenizers import ByteTokenizer

from .common import BenchSettings, run_benchmark
from .convergence import FlopsModel, cache_dir, save_state, time_to
from .paper import PAPER_CONVERGENCE

TASK_DATA = Path(__file__).resolve().parents[1] / "recipes" / "task_data"
PRETRAIN_TASKS = ("Repeat the word.", "Write the word in capitals.")
REGIME_MODEL = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=16, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256)


@dataclass
class RegimeSettings(BenchSettings):
    """What the regime benchmark depends on; :meth:`validate` checks it before any work starts."""

    method: str = setting("lora", "lora (PEFT adapters on every linear layer) or qlora (the same on NF4 4-bit base "
                                  "weights through bitsandbytes; on the CPU every linear size must be a multiple "
                                  "of 64)", choices=("lora", "qlora"))
    lora_rank: int = setting(8, "LoRA rank")
    drop_rates: tuple[float, ...] = setting((0.5, 0.75, 0.875), "DropBP rates (uniform and sensitivity-allocated)")
    contender_rate: float = setting(0.75, "LayerDrop, PLD and freezing are set to the training FLOPs of DropBP at "
                                          "this rate")
    lrs: tuple[float, ...] = setting((1e-3, 3e-3, 1e-2), "learning rates of the sweep (seed 0)")
    seeds: tuple[int, ...] = setting((0, 1, 2), "seeds of the final runs at each contender's chosen rate")
    contenders: tuple[str, ...] = setting(("baseline", "dropbp", "sensitivity", "layerdrop", "pld", "freeze"),
                                          "families to run (baseline, dropbp, sensitivity, layerdrop, pld, freeze)")
    epochs: float = setting(1.0, "passes over the training set per run (equal for every contender)")
    batch_size: int = setting(16, "examples per step")
    seq_len: int = setting(40, "tokens per example window (one example per window)")
    eval_every: int = setting(23, "steps between evaluations")
    warmup_steps: int = setting(20, "linear warm-up steps before the cosine decay")
    pld_gamma_scale: float = setting(10.0, "PLD's gamma times the run's step count (how fast keep probability falls)")
    pretrain_steps: int = setting(1200, "pre-training steps (cached on disk afterwards)")
    pretrain_lr: float = setting(3e-3, "AdamW learning rate of pre-training")
    threads: int = setting(1, "CPU threads for every run (0: PyTorch's default)")
    equal_time: bool = setting(True, "then train each contender faster than the baseline for the baseline's wall "
                                     "time (more epochs at its own speed, same learning rate) and compare there too")
    model_overrides: dict[str, Any] = setting(help="model shape (width, depth, heads)", cli=False,
                                              default_factory=lambda: dict(REGIME_MODEL))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        super().validate()
        check_choice("--method", self.method, ("lora", "qlora"))
        if self.method == "qlora":
            shape = {**REGIME_MODEL, **self.model_overrides}
            head_dim = shape["hidden_size"] // shape["num_attention_heads"]
            sizes = {"hidden_size": shape["hidden_size"], "intermediate_size": shape["intermediate_size"],
                     "num_key_value_heads * head_dim": shape["num_key_value_heads"] * head_dim}
            bad = {name: size for name, size in sizes.items() if size % 64}
            if bad and self.device != "cuda":
                raise ConfigError("--method qlora: bitsandbytes' CPU 4-bit kernels need every linear size to be a "
                                  "multiple of 64; here " + ", ".join(f"{k} = {v}" for k, v in bad.items())
                                  + " (model_overrides; the QLoRA config uses intermediate 192 and 4 kv heads).")
        self.drop_rates = check_drop_rates(self.drop_rates)
        check_number("--contender-rate", self.contender_rate, low=0, high=1, high_open=True)
        for lr in self.lrs:
            check_number("--lrs", lr, low=0, low_open=True)
        if not self.lrs or not self.seeds:
            raise ConfigError("--lrs and --seeds need at least one value each.")
        for family in self.contenders:
            check_choice("--contenders", family, ("baseline", "dropbp", "sensitivity", "layerdrop", "pld", "freeze"))
        if "baseline" not in self.contenders:
            raise ConfigError("--contenders must include baseline (every comparison is against it).")
        check_positive(self, "lora_rank", "batch_size", "seq_len", "eval_every", "pretrain_steps")
        for seed in self.seeds:
            check_seed(seed, "--seeds")
        check_number("--epochs", self.epochs, low=0, low_open=True)
        check_number("--pld-gamma-scale", self.pld_gamma_scale, low=0)
        check_non_negative(self, "warmup_steps", "threads")


@dataclass(frozen=True)
class Contender:
    """One configuration of the comparison: its label, family and parameters."""

    label: str
    family: str
    rate: float = 0.0
    extra: tuple[tuple[str, float], ...] = ()


#: Contender.extra's names (part of each cached run's key) -> apply_technique's options.
TECHNIQUE_OPTIONS = {"theta_bar": "pld_theta_bar", "gamma": "pld_gamma", "train_top": "train_top_layers"}


def plan(settings: RegimeSettings, num_layers: int, total_steps: int) -> list[Contender]:
    """The contenders, with LayerDrop, PLD and freezing set to DropBP's FLOPs at ``contender_rate``."""
    backward = 1.0  # LoRA/QLoRA: a kept block's backward is about one forward (input gradients only)
    rate = settings.contender_rate
    layerdrop = equal_flops_layerdrop_rate(rate, backward)
    gamma = settings.pld_gamma_scale / total_steps
    out = [Contender("baseline", "baseline")]
    families = settings.contenders
    if "dropbp" in families:
        out += [Contender(f"DropBP p={p:g}", "dropbp", p) for p in settings.drop_rates]
    if "sensitivity" in families:
        out += [Contender(f"DropBP p={p:g} sensitivity", "sensitivity", p) for p in settings.drop_rates]
    if "layerdrop" in families:
        out.append(Contender(f"LayerDrop p={layerdrop:.3g}", "layerdrop", layerdrop))
    if "pld" in families:
        theta = pld_theta_for_drop(layerdrop, gamma, num_layers, total_steps)
        out.append(Contender(f"PLD theta={theta:.2f}", "pld", layerdrop, (("theta_bar", theta), ("gamma", gamma))))
    if "freeze" in families:
        top = blocks_for_backward_budget(num_layers, rate)
        out.append(Contender(f"freeze: top {top} of {num_layers}", "freeze", rate, (("train_top", float(top)),)))
    return out


# -- data ------------------------------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """Fine-tuning windows (every task) and validation windows (held-out words)."""

    train_ids: torch.Tensor
    train_labels: torch.Tensor
    val_ids: torch.Tensor
    val_labels: torch.Tensor


def task_data(seq_len: int) -> TaskData:
    """The shipped instruction task as one-example windows (prompt left out of the loss)."""
    spec = DataSection(format="alpaca", template="plain", mask_prompt=True, seq_len=seq_len)
    tokenizer = ByteTokenizer()
    windows = {}
    for split in ("train", "validation"):
        records = load_records(str(TASK_DATA / f"{split}.jsonl"), TASK_DATA, f"task_data/{split}")
        windows[split] = to_windows(tokenize(records, spec, tokenizer, split), seq_len, False, tokenizer.pad_token_id)
    return TaskData(*windows["train"], *windows["validation"])


def pretrain_stream(seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-training text: Python source, and the copy and capitals tasks packed back to back (training words)."""
    tokenizer = ByteTokenizer()
    records = load_records(str(TASK_DATA / "train.jsonl"), TASK_DATA, "task_data/train")
    ids: list[int] = []
    for r in records:
        if r["instruction"] in PRETRAIN_TASKS:
            ids += tokenizer.encode(f"{r['instruction']}\n{r['input']}\n{r['output']}") + [tokenizer.eos_token_id]
    return stdlib_corpus(1_000_000), torch.tensor(ids)


# -- measuring -------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: torch.nn.Module, data: TaskData) -> tuple[float, float]:
    """(validation loss over answer tokens, exact match): an answer counts when every answer token and the end of
    sequence are the greedy choice given the right prefix, which is what greedy decoding of the answer needs."""
    model.eval()
    logits = model(input_ids=data.val_ids).logits[:, :-1].float()
    labels = data.val_labels[:, 1:]
    answer = labels != IGNORE
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    loss = float((losses * answer).sum() / answer.sum())
    correct = (logits.argmax(-1) == labels) | ~answer
    model.train()
    return loss, float(correct.all(dim=1).float().mean())


def _pretrained_state(settings: RegimeSettings, progress: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    key_data = {"model": settings.model_overrides, "steps": settings.pretrain_steps, "lr": settings.pretrain_lr,
                "seq": settings.seq_len, "batch": settings.batch_size, "torch": torch.__version__, "v": 1}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"regime-pretrained-{key}.safetensors"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        return load_file(str(path)), {**json.loads(info_path.read_text()), "from_cache": True}
    text, tasks = pretrain_stream(settings.seq_len)
    model = build_model("tiny", seed=1234, **settings.model_overrides).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.pretrain_lr)
    losses: list[float] = []
    start = time.perf_counter()
    bar = progress_bar(range(settings.pretrain_steps), desc="pre-train (cached afterwards)", enabled=progress)
    for step in bar:
        source = tasks if step % 2 else text
        batch = batch_at(source, step, settings.batch_size, settings.seq_len * 2, seed=7)
        for group in optimizer.param_groups:
            group["lr"] = settings.pretrain_lr * lr_factor(step, 50, settings.pretrain_steps, "cosine")
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    tenth = max(1, len(losses) // 10)
    info = {"pretrain_steps": settings.pretrain_steps, "pretrain_time_s": time.perf_counter() - start,
            "loss_last_tenth": statistics.fmean(losses[-tenth:]),
            "loss_previous_tenth": statistics.fmean(losses[-2 * tenth:-tenth]),
            "data": "Python standard-library source and the copy/capitals tasks (training words), alternating"}
    state = save_state(model, path)
    write_text_atomic(info_path, json.dumps(info))
    return state, {**info, "from_cache": False}


def _build(settings: RegimeSettings, state: dict[str, torch.Tensor], seed: int, backend: Backend) -> torch.nn.Module:
    model = build_model("tiny", seed=1234, **settings.model_overrides)
    model.load_state_dict(state, strict=False)
    if settings.method == "qlora":
        model = quantize_4bit(model, backend)
    return apply_method(model, "lora", lora_rank=settings.lora_rank, seed=seed).train()


def train_run(contender: Contender, lr: float, seed: int, settings: RegimeSettings, state: dict[str, torch.Tensor],
              data: TaskData, backend: Backend, progress: bool, epochs: float | None = None) -> dict[str, Any]:
    """One fine-tuning run of one contender (``epochs`` passes, default the settings'); returns its curve and
    summary."""
    model = _build(settings, state, seed, backend)
    flops_model = FlopsModel(model, settings.seq_len, backward=1.0)  # LoRA/QLoRA: input gradients only
    epochs = settings.epochs if epochs is None else epochs
    total = max(1, round(epochs * len(data.train_ids) / settings.batch_size))
    applied = None
    if contender.family != "baseline":
        technique = "dropbp" if contender.family == "sensitivity" else contender.family
        options: dict[str, Any] = {TECHNIQUE_OPTIONS[k]: int(v) if k == "train_top" else v for k, v in contender.extra}
        if technique == "dropbp":
            options["seq_len"] = settings.seq_len
        applied = apply_technique(model, technique, contender.rate, seed=seed, **options)
    policy = None if applied is None else applied.policy
    trained_from = len(applied.frozen.frozen_blocks) if applied is not None and applied.frozen is not None else 0
    schedule = None
    if contender.family == "sensitivity":
        schedule = AllocationSchedule(model, policy, mode="sensitivity", drop_rate=contender.rate, total_steps=total,
                                      allocate_at=0.1, seed=seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    order = torch.randperm(len(data.train_ids), generator=torch.Generator().manual_seed(seed))
    loss0, acc0 = evaluate(model, data)
    curve = [{"step": 0, "examples": 0, "time_s": 0.0, "flops": 0.0, "val_loss": loss0, "exact_match": acc0}]
    elapsed = flops = 0.0
    bar = progress_bar(range(total), desc=f"{contender.label} lr={lr:g} seed={seed}", enabled=progress)
    for step in bar:
        start_index = step * settings.batch_size
        index = torch.tensor([int(order[(start_index + k) % len(order)]) for k in range(settings.batch_size)])
        ids, labels = data.train_ids[index], data.train_labels[index]
        backend.synchronize()
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, settings.warmup_steps, total, "cosine")
        if schedule is not None:
            schedule.before_step(step, {"input_ids": ids, "labels": labels})
        if policy is not None:
            policy.begin_step(step)
        loss = model(input_ids=ids, labels=labels).loss
        backend.backward(loss, policy)
        backend.optimizer_step(optimizer)
        backend.synchronize()
        elapsed += time.perf_counter() - start
        tokens = ids.numel()
        if contender.family in ("dropbp", "sensitivity"):
            flops += flops_model.step(tokens, no_backward=policy.mask)
        elif contender.family in ("layerdrop", "pld"):
            flops += flops_model.step(tokens, skipped_blocks=policy.mask)
        else:
            flops += flops_model.step(tokens, trained_from=trained_from)
        if (step + 1) % settings.eval_every == 0 or step + 1 == total:
            val_loss, accuracy = evaluate(model, data)
            curve.append({"step": step + 1, "examples": (step + 1) * settings.batch_size, "time_s": elapsed,
                          "flops": flops, "val_loss": val_loss, "exact_match": accuracy})
            bar.set_postfix(val=f"{val_loss:.3f}", em=f"{accuracy:.2f}")
    bar.close()
    realized = policy.realized_drop_fraction() if policy is not None else 0.0
    if applied is not None:
        applied.remove()
    return {"label": contender.label, "family": contender.family, "rate": contender.rate, "lr": lr, "seed": seed,
            "epochs": epochs, "steps": total, "train_time_s": elapsed, "train_flops": flops,
            "final_val_loss": curve[-1]["val_loss"],
            "final_exact_match": curve[-1]["exact_match"], "curve": curve,
            "realized_drop_fraction": realized}


def _cached_run(folder: Path, contender: Contender, lr: float, seed: int, *args: Any,
                epochs: float | None = None) -> dict[str, Any]:
    key = f"{contender}|{lr!r}|{seed}" + ("" if epochs is None else f"|epochs={epochs!r}")
    path = folder / f"run-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    run = train_run(contender, lr, seed, *args, epochs=epochs)
    write_text_atomic(path, json.dumps(run))
    return run


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _speedups(mine: list[dict[str, Any]], baseline: dict[int, dict[str, Any]]) -> list[float]:
    """Per run that reaches its seed's baseline final validation loss: the baseline's time to that loss over the
    run's (``time_to_target_s`` is recorded on each run, None where not reached)."""
    speedups = []
    for run in mine:
        base = baseline[run["seed"]]
        target = base["final_val_loss"]
        took = time_to(run["curve"], target, "time_s")
        base_took = time_to(base["curve"], target, "time_s")
        run["time_to_target_s"] = took
        if took is not None and base_took:
            speedups.append(base_took / took)
    return speedups


def summarise(runs: list[dict[str, Any]], contenders: list[Contender],
              equal_time: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Per contender, over seeds: final loss and accuracy, time, time saved and speed-up to the baseline's final
    loss (each seed against the baseline of the same seed); with ``equal_time`` runs (the contender trained for the
    baseline's wall time), their final loss, accuracy and speed-up too."""
    baseline = {r["seed"]: r for r in runs if r["family"] == "baseline"}
    rows = []
    for contender in contenders:
        mine = [r for r in runs if r["label"] == contender.label]
        speedups = _speedups(mine, baseline)
        reached = len(speedups)
        longer = [r for r in equal_time if r["label"] == contender.label]
        longer_speedups = _speedups(longer, baseline)
        rows.append({
            "equal_time": None if not longer else {
                "epochs": statistics.fmean(r["epochs"] for r in longer),
                "final_val_loss": _spread([r["final_val_loss"] for r in longer]),
                "final_exact_match": _spread([r["final_exact_match"] for r in longer]),
                "train_time_s": _spread([r["train_time_s"] for r in longer]),
                "reached_target": len(longer_speedups), "seeds": len(longer),
                "speedup_to_target": _spread(longer_speedups) if longer_speedups else None},
            "label": contender.label, "family": contender.family, "lr": mine[0]["lr"], "seeds": len(mine),
            "final_val_loss": _spread([r["final_val_loss"] for r in mine]),
            "final_exact_match": _spread([r["final_exact_match"] for r in mine]),
            "train_time_s": _spread([r["train_time_s"] for r in mine]),
            "time_saved": _spread([1 - r["train_time_s"] / baseline[r["seed"]]["train_time_s"] for r in mine]),
            "flops_saved": _spread([1 - r["train_flops"] / baseline[r["seed"]]["train_flops"] for r in mine]),
            "accuracy_gap": _spread([r["final_exact_match"] - baseline[r["seed"]]["final_exact_match"]
                                     for r in mine]),
            "reached_target": reached, "speedup_to_target": _spread(speedups) if speedups else None,
        })
    return rows


def run_regime(settings: RegimeSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Pre-train (or load), sweep learning rates, run the seeds; return the result (``main`` publishes it)."""
    settings.validate()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    with seeded(settings.seed):
        state, pretrain_info = _pretrained_state(settings, progress)
    data = task_data(settings.seq_len)
    total = max(1, round(settings.epochs * len(data.train_ids) / settings.batch_size))
    contenders = plan(settings, settings.model_overrides["num_hidden_layers"], total)
    what_a_run_depends_on = ("method", "lora_rank", "epochs", "batch_size", "seq_len", "eval_every", "warmup_steps",
                             "pretrain_steps", "pretrain_lr", "model_overrides")
    key = hashlib.sha256(json.dumps({k: getattr(settings, k) for k in what_a_run_depends_on} | {"device": backend.name},
                                    sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = cache_dir() / f"regime-runs-{key}"
    args = (settings, state, data, backend, progress)
    sweep: dict[str, list[dict[str, Any]]] = {}
    for contender in contenders:
        sweep[contender.label] = [_cached_run(folder, contender, lr, settings.seeds[0], *args) for lr in settings.lrs]
    chosen = {label: min(runs, key=lambda r: r["final_val_loss"])["lr"] for label, runs in sweep.items()}
    runs = []
    for contender in contenders:
        for seed in settings.seeds:
            runs.append(_cached_run(folder, contender, chosen[contender.label], seed, *args))
    equal_time: list[dict[str, Any]] = []
    if settings.equal_time:
        base_time = statistics.fmean(r["train_time_s"] for r in runs if r["family"] == "baseline")
        for contender in contenders[1:]:
            own = statistics.fmean(r["train_time_s"] for r in runs if r["label"] == contender.label)
            epochs = round(settings.epochs * base_time / own, 2)
            if epochs <= settings.epochs * 1.05:
                continue  # no faster than the baseline: nothing to add
            equal_time += [_cached_run(folder, contender, chosen[contender.label], seed, *args, epochs=epochs)
                           for seed in settings.seeds]
    rows = summarise(runs, contenders, equal_time)
    return {"benchmark": "convergence-regime", **environment(backend), "settings": settings.to_dict(),
            "model": dict(settings.model_overrides), "method": settings.method, "pretrain": pretrain_info,
            "train_examples": len(data.train_ids), "validation_examples": len(data.val_ids), "steps_per_run": total,
            "sweep": {label: [{"lr": r["lr"], "final_val_loss": r["final_val_loss"],
                               "final_exact_match": r["final_exact_match"]} for r in runs]
                      for label, runs in sweep.items()},
            "chosen_lr": chosen, "summary": rows, "runs": runs, "equal_time_runs": equal_time, "cache": str(folder),
            "total_time_s": time.perf_counter() - started, "paper_reference": PAPER_CONVERGENCE}


# -- publishing ------------------------------------------------------------------------------------------------------
def _pm(spread: dict[str, float] | None, fmt: str, scale: float = 1.0) -> str:
    if spread is None:
        return "not reached"
    return f"{format(spread['mean'] * scale, fmt)} ± {format(spread['std'] * scale, fmt)}"


def regime_markdown(result: dict[str, Any]) -> str:
    """The table: per contender, chosen rate, final loss and accuracy, time saved, speed-up to the target."""
    rows = [(r["label"], f"{r['lr']:g}", _pm(r["final_val_loss"], ".4f"), _pm(r["final_exact_match"], ".1f", 100),
             _pm(r["accuracy_gap"], "+.1f", 100), _pm(r["time_saved"], "+.0f", 100), _pm(r["flops_saved"], ".0f", 100),
             f"{r['reached_target']}/{r['seeds']}",
             "—" if r["family"] == "baseline" else _pm(r["speedup_to_target"], ".2f"))
            for r in result["summary"]]
    equal_rows = [(r["label"], f"{r['equal_time']['epochs']:.2f}", _pm(r["equal_time"]["final_val_loss"], ".4f"),
                   _pm(r["equal_time"]["final_exact_match"], ".1f", 100),
                   f"{r['equal_time']['reached_target']}/{r['equal_time']['seeds']}",
                   _pm(r["equal_time"]["speedup_to_target"], ".2f"))
                  for r in result["summary"] if r.get("equal_time")]
    equal_table = [] if not equal_rows else [
        "**Equal wall time.** Each contender that is faster than the baseline, trained again for the baseline's "
        "wall time (more epochs at its own speed, its chosen learning rate, cosine over the longer run):", "",
        markdown_table(["contender", "epochs", "final val loss", "exact match %", "reached target",
                        "speed-up to target"], equal_rows), ""]
    sweep_rows = [(label, *[f"{s['final_val_loss']:.4f}" for s in runs], f"{result['chosen_lr'][label]:g}")
                  for label, runs in result["sweep"].items()]
    s, m, p = result["settings"], result["model"], result["pretrain"]
    lrs = [f"lr {lr:g}" for lr in s["lrs"]]
    return "\n".join([
        f"# Time to accuracy in the paper's regime ({result['method']}) on {result['device_name']} "
        f"({result['device']})", "",
        f"Model: Llama, {m['num_hidden_layers']} layers, width {m['hidden_size']}, pre-trained "
        f"{p['pretrain_steps']} steps on {p['data']} (loss {p['loss_previous_tenth']:.3f} -> "
        f"{p['loss_last_tenth']:.3f} over the last two tenths). Fine-tuning: {result['method']} rank "
        f"{s['lora_rank']} on all four string tasks ({result['train_examples']} examples, {s['epochs']:g} epochs = "
        f"{result['steps_per_run']} steps of {s['batch_size']}, cosine learning rate), validated on "
        f"{result['validation_examples']} examples of held-out words. Exact match: every answer token greedy-correct. "
        f"LayerDrop, PLD and freezing are set to DropBP's training FLOPs at p={s['contender_rate']:g}. "
        f"{s['threads']} CPU thread(s) per run.", "",
        f"Mean ± standard deviation over seeds {', '.join(map(str, s['seeds']))}, each at its contender's best "
        "learning rate from the sweep. *Time saved* and *accuracy gap* compare equal epochs with the baseline of "
        "the same seed; *speed-up* is the baseline's time to its own final validation loss over the contender's "
        "time to the same loss (only seeds that reach it).", "",
        "**Equal epochs.**", "",
        markdown_table(["contender", "lr", "final val loss", "exact match %", "acc. gap (pts)", "time saved %",
                        "FLOPs saved %", "reached target", "speed-up to target"], rows), "",
        *equal_table,
        "Learning-rate sweep (seed 0, final validation loss):", "",
        markdown_table(["contender", *lrs, "chosen"], sweep_rows), "",
        f"Paper, for reference (not measured here): {result['paper_reference']['time_to_target_speedup']}x faster "
        f"to the same accuracy, {result['paper_reference']['training_time_reduction'] * 100:.0f}% less training "
        f"time. Total benchmark time: {result['total_time_s'] / 60:.0f} min (runs already cached are not re-timed).",
    ])


def _mean_curve(runs: list[dict[str, Any]], axis: str, metric: str) -> tuple[list[float], list[float]]:
    points = len(min((r["curve"] for r in runs), key=len))
    scale = 1e12 if axis == "flops" else 1.0
    xs = [statistics.fmean(r["curve"][i][axis] for r in runs) / scale for i in range(points)]
    return xs, [statistics.fmean(r["curve"][i][metric] for r in runs) for i in range(points)]


def regime_figure(result: dict[str, Any]) -> Any:
    """Validation loss (top) and exact match (bottom), seed-mean curves per contender: equal epochs against wall
    time and against FLOPs, and equal wall time against wall time."""
    plt = pyplot()
    longer = result.get("equal_time_runs") or []
    columns = [("runs", "time_s", "equal epochs"), ("runs", "flops", "equal epochs")]
    if longer:
        columns.append(("equal_time_runs", "time_s", "equal wall time"))
    fig, axes = plt.subplots(2, len(columns), figsize=(6 * len(columns), 8), squeeze=False)
    styles = {"baseline": "-", "dropbp": "-", "sensitivity": "--", "layerdrop": ":", "pld": ":", "freeze": "-."}
    palette = plt.get_cmap("tab10").colors
    colours = {row["label"]: "k" if row["family"] == "baseline" else palette[i % len(palette)]
               for i, row in enumerate(result["summary"])}
    for col, (source, axis, title) in enumerate(columns):
        for row in result["summary"]:
            mine = [r for r in result[source] if r["label"] == row["label"]]
            if source != "runs" and row["family"] == "baseline":
                mine = [r for r in result["runs"] if r["family"] == "baseline"]
            if not mine:
                continue
            for ax, metric in ((axes[0][col], "val_loss"), (axes[1][col], "exact_match")):
                ax.plot(*_mean_curve(mine, axis, metric), linestyle=styles[row["family"]], color=colours[row["label"]],
                        label=row["label"] if (ax is axes[0][0]) else None)
        axes[0][col].set_title(title)
        axes[0][col].set_yscale("log")
        axes[1][col].set_xlabel("training TFLOPs (FLOPs model)" if axis == "flops" else "training wall time (s)")
    axes[0][0].set_ylabel("validation loss")
    axes[1][0].set_ylabel("exact match")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle("Fine-tuning a deep pre-trained model: mean of seeds, each contender at its best learning rate")
    fig.tight_layout()
    return fig


def main(settings: RegimeSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench regime``: validate, run (resuming from cached runs), write ``convergence-regime.*``."""
    return run_benchmark("convergence-regime", settings, run_regime, regime_markdown, regime_figure,
                         progress=progress)
