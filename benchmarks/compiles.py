"""Graph-compile benchmark: how many graphs ``torch.compile`` builds over a training run, ``pool`` vs ``bernoulli``.

Every distinct drop mask is a distinct set of dynamo guards, so a compiled model recompiles for each new mask: the
same thing lazy-mode Gaudi does for each new graph. This runs on the CPU with real ``torch.compile`` and stands in
for Gaudi graph caching, which cannot run here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dropbp.backends import Backend
from dropbp.core.allocation import validate_drop_rate
from dropbp.core.engine import DropBP
from dropbp.core.progress import progress_bar
from dropbp.core.rate_schedule import RateSchedule
from dropbp.recipes.for_benchmarks import (COMPILE_BACKEND, RATE, Naming, Problems, StepRunner, apply_method,
                                           build_model, environment, markdown_table, method_field, option_name,
                                           pool_size_field, pyplot, setting, steps_field)

from .harness import BenchSettings, run_benchmark

SMALL_LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                   num_hidden_layers=4, vocab_size=256)


@dataclass
class CompilesSettings(BenchSettings):
    """What a graph-count run depends on; :meth:`validate` checks it before any work starts."""

    method: str = method_field("lora", ("full", "lora"))
    drop_rate: float = setting(0.75, "drop rate in [0, 1)", allowed=RATE)
    pool_size: int = pool_size_field()
    steps: int = steps_field(200)
    compile_backend: str = setting("aot_eager", "dynamo backend; aot_eager traces forward and backward without code "
                                                "generation, inductor also generates kernels (slow on the CPU)",
                                   allowed=COMPILE_BACKEND)

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)


def count_compiles(backend: Backend, *, sampler: str, drop_rate: float = 0.75, steps: int = 200, pool_size: int = 8,
                   method: str = "lora", compile_backend: str = "aot_eager", recompile_limit: int = 1024,
                   seq_len: int = 32, seed: int = 0, model_overrides: dict[str, Any] | None = None,
                   schedule: RateSchedule | None = None, progress: bool = False) -> dict[str, Any]:
    """Train a compiled tiny Llama for ``steps`` steps and count the graphs dynamo compiled, step by step."""
    import torch._dynamo

    validate_drop_rate(drop_rate)
    torch._dynamo.reset()
    model = apply_method(build_model("tiny", seed=seed, device=backend.device,
                                     **(model_overrides or SMALL_LLAMA)), method, seed=seed).train()
    dropbp = DropBP(model, drop_rate, sampler=sampler, pool_size=pool_size, seed=seed, seq_len=seq_len,
                    schedule=schedule)
    compiled = backend.compile(model, backend=compile_backend, recompile_limit=recompile_limit)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = torch.randint(0, dropbp.shape.vocab, (1, seq_len), generator=torch.Generator().manual_seed(seed))
    start_count = backend.compile_count() or 0
    cumulative, masks = [], set()
    runner = StepRunner(compiled, backend, optimizer, dropbp)
    start = time.perf_counter()
    for step in progress_bar(range(steps), desc=f"compiles ({sampler})", enabled=progress):
        runner.step(step, [batch.to(backend.device)])
        masks.add(dropbp.mask)
        cumulative.append((backend.compile_count() or 0) - start_count)
    elapsed = time.perf_counter() - start
    dropbp.remove()
    return {"sampler": sampler, "pool_size": pool_size if sampler == "pool" else None, "drop_rate": drop_rate,
            "steps": steps, "graphs_compiled": cumulative[-1], "distinct_masks": len(masks),
            "graphs_in_last_half": cumulative[-1] - cumulative[steps // 2 - 1] if steps > 1 else None,
            "cumulative_graphs": cumulative, "time_s": elapsed}


def run_compiles(settings: CompilesSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Both samplers, same model and settings; the JSON-ready result (nothing is written)."""
    settings.validate()
    backend.check_compile_backend(settings.compile_backend)
    runs = [count_compiles(backend, sampler=s, drop_rate=settings.drop_rate, steps=settings.steps,
                           pool_size=settings.pool_size, compile_backend=settings.compile_backend,
                           method=settings.method, seed=settings.seed, progress=progress)
            for s in ("pool", "bernoulli")]
    return {"benchmark": "compiles", **environment(backend), "model": "tiny", "model_overrides": SMALL_LLAMA,
            "method": settings.method, "compile_backend": settings.compile_backend, "settings": settings.to_dict(),
            "runs": runs}


def compiles_markdown(result: dict[str, Any]) -> str:
    """Table: graphs compiled and distinct masks per sampler."""
    rows = [(r["sampler"], r["pool_size"], r["drop_rate"], r["steps"], r["distinct_masks"], r["graphs_compiled"],
             r["graphs_in_last_half"], r["time_s"]) for r in result["runs"]]
    return "\n".join([
        f"# Graph compiles over training: tiny Llama ({result['method']}) on {result['device_name']} "
        f"({result['device']}), torch.compile backend {result['compile_backend']}", "",
        markdown_table(["sampler", "pool K", "drop rate", "steps", "distinct masks", "graphs compiled",
                        "compiled in 2nd half", "time (s)"], rows), "",
        "Each distinct mask is a new set of dynamo guards, as each new drop pattern is a new graph in lazy-mode "
        "Gaudi. The pool sampler replays at most K masks, so compiles stop after the first K steps.",
    ])


def compiles_figure(result: dict[str, Any]) -> Any:
    """Cumulative graphs compiled against training step, one line per sampler."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run in result["runs"]:
        label = f"{run['sampler']}" + (f" (K={run['pool_size']})" if run["pool_size"] else "")
        ax.plot(range(1, run["steps"] + 1), run["cumulative_graphs"], label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("graphs compiled (cumulative)")
    ax.set_title("torch.compile graphs: pool vs bernoulli")
    ax.legend()
    fig.tight_layout()
    return fig


def main(settings: CompilesSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench compiles``: validate, count, write ``compiles.{json,md,png}``, print the table."""
    return run_benchmark("compiles", settings, run_compiles, compiles_markdown, compiles_figure, progress=progress)
