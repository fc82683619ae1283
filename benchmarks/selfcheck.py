"""``dropbp selfcheck --device cuda|hpu|cpu``: everything the CPU cannot tell, in one command on a lent device.

1. **The engine on the device**: a small Llama, full fine-tuning, three masks; every gradient on the device in fp32
   against the CPU's (relative error per parameter, at most ``FP32_TOLERANCE``), and in bf16 (at most
   ``BF16_TOLERANCE``); on the CPU itself, DropBP against the constant-output reference, bit for bit.
2. **The paper's throughput shape**: Llama2-7B (random weights), LoRA, bf16, sequence 512, batch 1, at drop rates
   0, 0.5, 0.75 and 0.875, with both samplers (bernoulli, pool), with each rate's peak memory. ``--device cpu`` runs
   the same code at the ``tiny`` shape, sequence 64, fp32.
3. **Compiled graphs** under the pool sampler (``torch.compile``, ``aot_eager``): bounded by the pool size (8).

It writes ``selfcheck.{json,md,png}`` (default ``results/<device>/``) and prints one summary line beside the paper's
+79% (A100) and +117% (Gaudi2). From a source tree with no install: ``bash benchmarks/selfcheck.sh cuda``.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch

from dropbp.backends import Backend
from dropbp.core import DropBP
from dropbp.core.exactness import check_masks
from dropbp.recipes.for_benchmarks import (POSITIVE, Naming, Problems, build_model, markdown_table,
                                           model_overrides_field, option_name, pyplot, setting, steps_field)

from .compiles import count_compiles
from .harness import BenchSettings, run_benchmark
from .paper import PAPER_THROUGHPUT
from .throughput import ThroughputSettings, run_throughput

FP32_TOLERANCE = 1e-3
BF16_TOLERANCE = 0.1
ENGINE_SHAPE = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256)
SAMPLERS = ("bernoulli", "pool")


@dataclasses.dataclass
class SelfcheckSettings(BenchSettings):
    """What the self-check depends on; the workload follows the device (see the module docstring)."""

    steps: int = steps_field(20, "measured throughput rounds per configuration (warm-up: 3, or the pool size)")
    compile_steps: int = setting(40, "training steps of the compiled-graph count", allowed=POSITIVE)
    pool_size: int = setting(8, "masks in the pool sampler's pool (the compiled-graph bound)", allowed=POSITIVE)
    model_overrides: dict[str, Any] = model_overrides_field("throughput model fields to change (tests)")

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)


def _gradients(model: torch.nn.Module, mask: list[bool], batch: torch.Tensor) -> dict[str, torch.Tensor | None]:
    with DropBP(model, 0.5) as dropbp:
        dropbp.begin_step(0, mask=mask)
        model.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().float().cpu() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def _relative_error(grads: dict[str, Any], reference: dict[str, Any]) -> float:
    """The largest ``||g - g_ref|| / ||g_ref||`` over parameters; infinite where one has a gradient and not the other."""
    worst = 0.0
    for name, ref in reference.items():
        grad = grads[name]
        if (grad is None) != (ref is None):
            return float("inf")
        if ref is not None and float(ref.norm()) > 0:
            worst = max(worst, float((grad - ref).norm() / ref.norm()))
    return worst


def check_engine(backend: Backend, seed: int = 0) -> dict[str, Any]:
    """Part 1 of the module docstring: the errors, their tolerances and whether each holds."""
    model = build_model("tiny", seed=seed, **ENGINE_SHAPE).train()
    rng = random.Random(seed)
    branches = 2 * ENGINE_SHAPE["num_hidden_layers"]
    masks = [[rng.random() < 0.5 for _ in range(branches)] for _ in range(2)] + [[True] * branches]
    batch = torch.randint(0, ENGINE_SHAPE["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(seed))
    exact_on_cpu = all(c.exact and c.max_abs_diff == 0 for c in check_masks(model, masks, batch))
    cpu = [_gradients(model, mask, batch) for mask in masks]
    errors = {}
    for dtype in (torch.float32, torch.bfloat16):
        device_model = build_model("tiny", seed=seed, **ENGINE_SHAPE).to(device=backend.device, dtype=dtype).train()
        errors[dtype] = max(_relative_error(_gradients(device_model, mask, batch.to(backend.device)), ref)
                            for mask, ref in zip(masks, cpu))
        del device_model
    fp32, bf16 = errors[torch.float32], errors[torch.bfloat16]
    return {"exact_on_cpu": exact_on_cpu, "masks": len(masks), "fp32_relative_error": fp32,
            "fp32_tolerance": FP32_TOLERANCE, "bf16_relative_error": bf16, "bf16_tolerance": BF16_TOLERANCE,
            "passed": exact_on_cpu and fp32 <= FP32_TOLERANCE and bf16 <= BF16_TOLERANCE}


def throughput_settings(settings: SelfcheckSettings, backend: Backend, sampler: str) -> ThroughputSettings:
    """The paper's shape on an accelerator, the tiny one on the CPU."""
    paper = backend.accelerator
    return ThroughputSettings(device=settings.device, seed=settings.seed, model="llama2-7b" if paper else "tiny",
                              method="lora", precision="bf16" if paper else "fp32", drop_rates=(0.5, 0.75, 0.875),
                              seq_len=512 if paper else 64, batch_size=1, warmup=3 if sampler == "bernoulli" else 8,
                              steps=settings.steps, sampler=sampler, memory_masks=2,
                              model_overrides=dict(settings.model_overrides))


def run_selfcheck(settings: SelfcheckSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """The three parts; the JSON-ready result (nothing is written)."""
    from dropbp.recipes.for_benchmarks import environment

    engine = check_engine(backend, settings.seed)
    throughput = {}
    for sampler in SAMPLERS:
        chosen = throughput_settings(settings, backend, sampler)
        chosen.validate()
        throughput[sampler] = run_throughput(chosen.resolve(type(backend)), backend, progress=progress)
    graphs = count_compiles(backend, sampler="pool", drop_rate=0.75, steps=settings.compile_steps,
                            pool_size=settings.pool_size, seed=settings.seed)
    return {"benchmark": "selfcheck", **environment(backend), "settings": settings.to_dict(), "engine": engine,
            "throughput": throughput, "compiles": {k: v for k, v in graphs.items() if k != "cumulative_graphs"},
            "paper_reference": PAPER_THROUGHPUT}


def _rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for sampler, run in result["throughput"].items():
        base = run["baseline"]
        rows.append((sampler, "baseline (no DropBP)", "-", _gib(base.get("peak_mem_bytes"))))
        for entry in run["runs"]:
            rows.append((sampler, f"{entry['drop_rate']:g}", f"{100 * entry['throughput_increase']:+.0f}%",
                         _gib(entry.get("peak_mem_bytes"))))
    return rows


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def summary_line(result: dict[str, Any]) -> str:
    """One line: the engine's verdict, the gain at 0.875 per sampler beside the paper's, the pool's graph count."""
    engine = result["engine"]
    gains = []
    for sampler, run in result["throughput"].items():
        top = max(run["runs"], key=lambda r: r["drop_rate"])
        gains.append(f"{100 * top['throughput_increase']:+.0f}% ({sampler})")
    shape = next(iter(result["throughput"].values()))
    paper = result["paper_reference"]
    return (f"selfcheck {result['device']} ({result['device_name']}): engine "
            f"{'OK' if engine['passed'] else 'FAILED'} (fp32 error {engine['fp32_relative_error']:.1e} <= "
            f"{engine['fp32_tolerance']:g}, bf16 {engine['bf16_relative_error']:.1e} <= {engine['bf16_tolerance']:g}); "
            f"{shape['model']} {shape['method']} {shape['dtype']} seq {shape['seq_len']} at p=0.875: "
            f"{', '.join(gains)}; paper: +{100 * paper['a100']['throughput_increase']:.0f}% (A100), "
            f"+{100 * paper['gaudi2']['throughput_increase']:.0f}% (Gaudi2); pool sampler: "
            f"{result['compiles']['graphs_compiled']} graphs for {result['compiles']['distinct_masks']} masks "
            f"(pool of {result['compiles']['pool_size']})")


def selfcheck_markdown(result: dict[str, Any]) -> str:
    """The summary line, then throughput and peak memory per sampler and rate."""
    return (f"# Self-check on {result['device_name']}\n\n{summary_line(result)}\n\n"
            + markdown_table(["sampler", "drop rate", "throughput", "peak memory"], _rows(result)) + "\n")


def selfcheck_figure(result: dict[str, Any]) -> Any:
    """Throughput increase against the drop rate, per sampler, with the paper's points."""
    figure, axis = pyplot().subplots(figsize=(6, 4))
    for sampler, run in result["throughput"].items():
        axis.plot([r["drop_rate"] for r in run["runs"]], [100 * r["throughput_increase"] for r in run["runs"]],
                  marker="o", label=sampler)
    for name, ref in result["paper_reference"].items():
        axis.scatter([ref["drop_rate"]], [100 * ref["throughput_increase"]], marker="*", s=120, label=f"paper {name}")
    axis.set_xlabel("drop rate")
    axis.set_ylabel("throughput increase (%)")
    axis.set_title(f"DropBP self-check: {result['device_name']}")
    axis.legend()
    figure.tight_layout()
    return figure


def main(settings: SelfcheckSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp selfcheck``: validate, run, write ``selfcheck.{json,md,png}``, print the summary line."""
    result = run_benchmark("selfcheck", settings, run_selfcheck, selfcheck_markdown, selfcheck_figure,
                           progress=progress)
    print(summary_line(result))
    return result

