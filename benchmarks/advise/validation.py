"""``dropbp bench advise-validation``: ``dropbp advise``'s probe on every regime the project has an equal-time
verdict for, its recommendation against that verdict, and the confusion table (on both bases of the prediction).

A case's verdict is the equal-time study's: *pays* where a DropBP setting reached DropBP off's final validation
loss sooner in DropBP off's time and held the loss margin in at least 2 of 3 seeds, *off* where none did; its
evidence names the committed result it comes from. The probe runs on the same model, adapters and data the study
trained (a regime study's cached pre-trained toy model, or the recipe).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from dropbp.backends import Backend
from dropbp.recipes.for_benchmarks import markdown_table, pyplot, setting

from ..harness import run_benchmark
from .command import ProbeSettings, probe_target
from .predict import BASES, Prediction, recommend
from .targets import recipe_target, regime_target


@dataclasses.dataclass(frozen=True)
class Case:
    """A regime with a verdict: the probe's target (a recipe, or a regime study's config file), the verdict
    (``pays`` or ``off``), the evidence, and recipe overrides the study trained with."""

    name: str
    target: str
    verdict: str
    evidence: str
    overrides: tuple[str, ...] = ()


RESULTS = "benchmarks/results/cpu"
CASES = (
    Case("toy-adapt-strings", "benchmarks/configs/regime-adapt-strings-cpu.yaml", "pays",
         f"DropBP p=0.5 sensitivity: DropBP off's loss 1.49x sooner, held 3/3 ({RESULTS}/regime-verdict.md)"),
    Case("toy-learn-numbers", "benchmarks/configs/regime-learn-numbers-cpu.yaml", "pays",
         f"DropBP p=0.5 sensitivity: 1.27x sooner, held 3/3 ({RESULTS}/regime-verdict.md)"),
    Case("toy-learn-strings", "benchmarks/configs/regime-learn-strings-cpu.yaml", "off",
         f"every DropBP setting lost in every seed, best +30% loss ({RESULTS}/regime-verdict.md)"),
    Case("smollm2-tasks", "smollm2-tasks", "off",
         f"best setting +3.9% to +8.6% loss, never reaches DropBP off's loss, 3 seeds ({RESULTS}/smollm2/)"),
    Case("smollm2-numbers", "smollm2-numbers", "off",
         f"best setting +13% loss, one seed ({RESULTS}/smollm2/numbers/)"),
    Case("smollm2-tasks-full", "smollm2-tasks-full", "off",
         f"best setting +3.8% loss, one seed ({RESULTS}/smollm2/full/)"),
    Case("smollm2-alpaca", "smollm2-alpaca", "off",
         "exact-then-depth 0.5 never reaches DropBP off's perplexity in its time (+0.4% to +0.6% loss, 3 seeds), nor "
         f"the paper's sensitivity 0.5 (+2.7%, seed 0; {RESULTS}/smollm2-alpaca/)", ("train.precision=mixed-bf16",)),
    Case("smollm2-chatterbot", "smollm2-chatterbot", "off",
         "exact-then-depth 0.5 never reaches DropBP off's perplexity in its time, +1.3% to +2.2% loss, 3 seeds "
         f"({RESULTS}/smollm2-chatterbot/)", ("train.precision=mixed-bf16",)),
    Case("gemma3-chatterbot", "gemma3-chatterbot", "off",
         "depth 0.5, advise's best candidate (predicted first, 0.65x): +4.9% to +5.8% loss, never reaches DropBP off's "
         f"perplexity in its time, 3 seeds ({RESULTS}/gemma3-chatterbot/)", ("train.precision=mixed-bf16",)),
)
CASE_NAMES = tuple(c.name for c in CASES)


@dataclasses.dataclass
class AdviseValidationSettings(ProbeSettings):
    """Which cases to probe, each within ``budget`` minutes."""

    cases: tuple[str, ...] = setting(CASE_NAMES, "the cases to probe (each a regime with an equal-time verdict)",
                                     choices=CASE_NAMES)


def _agrees(verdict: str, recommended: Prediction | None) -> bool:
    return (recommended is not None) == (verdict == "pays")


def measure(settings: AdviseValidationSettings, backend: Backend, *, progress: bool = True) -> dict[str, Any]:
    """Probe every chosen case and compare its recommendation (on both bases) with the case's verdict."""
    rows = []
    for case in (c for c in CASES if c.name in settings.cases):
        if progress:
            print(f"advise-validation: {case.name}", flush=True)
        opened = (regime_target(case.target, backend, seed=settings.seed, after_steps=settings.after_steps,
                                progress=progress) if case.target.endswith(".yaml")
                  else recipe_target(case.target, case.overrides, backend, seed=settings.seed,
                                     after_steps=settings.after_steps, progress=progress))
        with opened as target:
            probed = probe_target(target, settings, backend, started=time.perf_counter(), progress=progress)
        predictions = [Prediction(**p) for p in probed["predictions"]]
        advice = {basis: recommend(predictions, basis) for basis in BASES}
        rows.append({"case": case.name, "target": case.target, "verdict": case.verdict, "evidence": case.evidence,
                     "advice": {basis: None if a is None else a.label for basis, a in advice.items()},
                     "best": {basis: max(p.predicted if basis == "per-mask" else p.predicted_mean for p in predictions)
                              for basis in BASES},
                     "agrees": {basis: _agrees(case.verdict, a) for basis, a in advice.items()}, "probe": probed})
    return {"benchmark": "advise-validation", "options": settings.to_dict(), "cases": rows,
            "confusion": {basis: confusion(rows, basis) for basis in BASES}}


def confusion(rows: list[dict[str, Any]], basis: str) -> dict[str, int]:
    """Counts of (verdict, advice) pairs on ``basis``: pays/on, pays/off, off/on, off/off."""
    counts = {"pays, advised on": 0, "pays, advised off": 0, "off, advised on": 0, "off, advised off": 0}
    for row in rows:
        advised = "on" if row["advice"][basis] is not None else "off"
        counts[f"{row['verdict']}, advised {advised}"] += 1
    return counts


def markdown(result: dict[str, Any]) -> str:
    """Per case: verdict, advice and best predicted speed-up on both bases; then the confusion tables."""
    table = [[r["case"], r["verdict"], r["advice"]["per-mask"] or "off", f"{r['best']['per-mask']:.2f}x",
              "yes" if r["agrees"]["per-mask"] else "no", r["advice"]["mean-of-masks"] or "off",
              f"{r['best']['mean-of-masks']:.2f}x", "yes" if r["agrees"]["mean-of-masks"] else "no", r["evidence"]]
             for r in result["cases"]]
    lines = ["# dropbp advise against the equal-time verdicts", "",
             "Each case probed as `dropbp advise` probes a recipe (same candidates, masks and budget per case), on "
             "the model, adapters and data its study trained. *Verdict*: the equal-time study's. *Best predicted*: "
             "the largest predicted speed-up to DropBP off's loss among the candidates (above 1: DropBP advised).", "",
             markdown_table(["case", "verdict", "advice (per mask)", "best predicted", "agrees",
                             "advice (mean of masks)", "best predicted", "agrees", "evidence"], table), ""]
    for basis, counts in result["confusion"].items():
        right = counts["pays, advised on"] + counts["off, advised off"]
        lines += [f"Basis {basis}: {right} of {len(result['cases'])} right.", "",
                  markdown_table(["", "advised on", "advised off"],
                                 [["verdict: pays", counts["pays, advised on"], counts["pays, advised off"]],
                                  ["verdict: off", counts["off, advised on"], counts["off, advised off"]]]), ""]
    return "\n".join(lines)


def figure(result: dict[str, Any]) -> Any:
    """Best predicted speed-up per case on both bases, coloured by the verdict, against the break-even line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    cases = result["cases"]
    for i, row in enumerate(cases):
        colour = "tab:green" if row["verdict"] == "pays" else "tab:red"
        ax.scatter([i], [row["best"]["per-mask"]], color=colour, marker="o")
        ax.scatter([i], [row["best"]["mean-of-masks"]], color=colour, marker="x")
    ax.axhline(1.0, color="grey", ls="--", lw=1)
    ax.set_xticks(range(len(cases)), [r["case"] for r in cases], rotation=25, ha="right", fontsize=7)
    ax.set(ylabel="best predicted speed-up", title="advise vs verdicts (green: DropBP paid; o per mask, x mean)")
    fig.tight_layout()
    return fig


def main(settings: AdviseValidationSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench advise-validation``: probe, compare, then write ``advise-validation.{json,md,png}``."""
    return run_benchmark("advise-validation", settings, measure, markdown, figure, progress=progress)
