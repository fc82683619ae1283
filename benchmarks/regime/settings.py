"""Settings of the regime benchmark and its plan: which contenders run, each set to DropBP's training FLOPs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dropbp.core.freezing import blocks_for_backward_budget
from dropbp.core.layerdrop import equal_flops_layerdrop_rate, pld_theta_for_drop
from dropbp.recipes.for_benchmarks import (NON_NEGATIVE, NON_NEGATIVE_NUMBER, POSITIVE, POSITIVE_NUMBER,
                                           POSITIVE_NUMBERS, RATE, RATES, SEEDS, Naming, Problems, batch_size_field,
                                           check_cpu_4bit_shapes, model_overrides_field, option_name, seq_len_field,
                                           setting)

from ..harness import StudySettings
from ..study import Contender

#: The kinds of contender, in the order tables list them.
CONTENDER_KINDS = ("baseline", "dropbp", "sensitivity", "layerdrop", "pld", "freeze", "schedule", "freeze-dropbp")
#: The kinds run unless the settings name others (the committed study's).
DEFAULT_KINDS = CONTENDER_KINDS[:6]
REGIMES = ("learn", "adapt")
FAMILY_SCHEDULES = ("cosine", "linear", "steps", "warmup")
TASK_FAMILIES = ("strings", "numbers")
REGIME_MODEL = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=16, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256)


@dataclass
class RegimeSettings(StudySettings):
    """What the regime benchmark depends on; :meth:`validate` checks it before any work starts."""

    regime: str = setting("learn", "learn: the fine-tuning teaches skills the pre-trained model lacks (pre-training "
                                   "saw two of the four string tasks, none of the numbers); adapt: pre-training saw "
                                   "every task of the family, and fine-tuning teaches a style (answers end with a "
                                   "full stop): the loss starts low and flattens early, as in the paper",
                          choices=REGIMES)
    family: str = setting("strings", "the task family fine-tuned on (strings: reverse, copy, capitals, sort; "
                                     "numbers: add seven, double, sum the digits, even or not)",
                          choices=TASK_FAMILIES)

    method: str = setting("lora", "lora (PEFT adapters on every linear layer) or qlora (the same on NF4 4-bit base "
                                  "weights through bitsandbytes; on the CPU every linear size must be a multiple "
                                  "of 64)", choices=("lora", "qlora"))
    lora_rank: int = setting(8, "LoRA rank", allowed=POSITIVE)
    drop_rates: tuple[float, ...] = setting((0.5, 0.75, 0.875), "DropBP rates (uniform and sensitivity-allocated)",
                                            allowed=RATES)
    contender_rate: float = setting(0.75, "LayerDrop, PLD and freezing are set to the training FLOPs of DropBP at "
                                          "this rate", allowed=RATE)
    lrs: tuple[float, ...] = setting((1e-3, 3e-3, 1e-2), "learning rates of the sweep (seed 0)",
                                     allowed=POSITIVE_NUMBERS)
    seeds: tuple[int, ...] = setting((0, 1, 2), "seeds of the final runs at each contender's chosen rate",
                                     allowed=SEEDS)
    schedules: tuple[str, ...] = setting(("cosine",), "the schedule family's drop-rate schedules, each from "
                                                      "contender_rate: cosine, linear or steps (decay to 0), "
                                                      "warmup (0 for the first quarter, then constant)",
                                         choices=FAMILY_SCHEDULES)
    contenders: tuple[str, ...] = setting(DEFAULT_KINDS, f"kinds of contender to run ({', '.join(CONTENDER_KINDS)}; schedule: "
                                                            "DropBP under each of schedules; "
                                                            "freeze-dropbp: the top half trained, DropBP at "
                                                            "contender_rate there)",
                                          choices=CONTENDER_KINDS,
                                          allowed=f"comma-separated, each one of {', '.join(CONTENDER_KINDS)}; "
                                                  "baseline included")
    epochs: float = setting(1.0, "passes over the training set per run (equal for every contender)",
                            allowed=POSITIVE_NUMBER)
    batch_size: int = batch_size_field(16, "examples per step")
    seq_len: int = seq_len_field(40, "tokens per example window (one example per window)")
    eval_every: int = setting(23, "steps between evaluations", allowed=POSITIVE)
    warmup_steps: int = setting(20, "linear warm-up steps before the cosine decay", allowed=NON_NEGATIVE)
    pld_gamma_scale: float = setting(10.0, "PLD's gamma times the run's step count (how fast keep probability falls)",
                                     allowed=NON_NEGATIVE_NUMBER)
    pretrain_steps: int = setting(1200, "pre-training steps (cached on disk afterwards)", allowed=POSITIVE)
    pretrain_lr: float = setting(3e-3, "AdamW learning rate of pre-training", allowed=POSITIVE_NUMBER)
    model_overrides: dict[str, Any] = model_overrides_field("model shape (width, depth, heads)", REGIME_MODEL)

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        if self.method == "qlora" and self.device != "cuda":
            p.check(check_cpu_4bit_shapes, "tiny", {**REGIME_MODEL, **self.model_overrides}, name("method"))
        if isinstance(self.contenders, (list, tuple)) and "baseline" not in self.contenders:
            p.add(f"{name('contenders')} must include baseline (every comparison is against it).")


def plan(settings: RegimeSettings, num_layers: int, total_steps: int) -> list[Contender]:
    """The contenders, with LayerDrop, PLD and freezing set to DropBP's FLOPs at ``contender_rate``."""
    backward = 1.0  # LoRA/QLoRA: a kept block's backward is about one forward (input gradients only)
    rate = settings.contender_rate
    layerdrop = equal_flops_layerdrop_rate(rate, backward)
    gamma = settings.pld_gamma_scale / total_steps
    out = [Contender("baseline")]
    kinds = settings.contenders
    if "dropbp" in kinds:
        out += [Contender(f"DropBP p={p:g}", "dropbp", "dropbp", p) for p in settings.drop_rates]
    if "sensitivity" in kinds:
        out += [Contender(f"DropBP p={p:g} sensitivity", "sensitivity", "dropbp", p, allocation="paper")
                for p in settings.drop_rates]
    if "layerdrop" in kinds:
        out.append(Contender(f"LayerDrop p={layerdrop:.3g}", "layerdrop", "layerdrop", layerdrop))
    if "pld" in kinds:
        theta = pld_theta_for_drop(layerdrop, gamma, num_layers, total_steps)
        out.append(Contender(f"PLD theta={theta:.2f}", "pld", "pld", layerdrop,
                             (("theta_bar", theta), ("gamma", gamma))))
    if "freeze" in kinds:
        top = blocks_for_backward_budget(num_layers, rate)
        out.append(Contender(f"freeze: top {top} of {num_layers}", "freeze", "freeze", rate,
                             (("train_top_layers", top),)))
    if "schedule" in kinds:
        out += [Contender(f"DropBP p={rate:g} after warm-up" if kind == "warmup" else f"DropBP {kind} {rate:g} -> 0",
                          "schedule", "dropbp", rate, schedule=kind) for kind in settings.schedules]
    if "freeze-dropbp" in kinds:
        half = max(1, num_layers // 2)
        out.append(Contender(f"freeze: top {half} of {num_layers} + DropBP p={rate:g}", "freeze-dropbp",
                             "freeze-dropbp", rate, (("train_top_layers", half),)))
    return out
