"""One table over several regime studies: per study and contender, how it ends given the baseline's wall time
against the baseline of the same seed, and how much sooner it reaches the baseline's final loss and exact match.

``dropbp bench regime-verdict RESULT.json ... [--out DIR]`` (the ``regime-*.json`` files that ``dropbp bench regime``
writes) writes ``regime-verdict.{json,md,png}``. A contender *holds* in a seed when, given the baseline's time (its
equal-time run; its equal-epochs run when it was not faster), its final validation loss is at most the baseline's +
``loss_margin`` (relative) and its exact match at least the baseline's - ``match_margin``. *Sooner* is the baseline's time to its own
final validation loss (and, separately, exact match) over the contender's, read off the equal-time curves.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbp.core.errors import ConfigError
from dropbp.recipes.for_benchmarks import (FOLDER, Naming, Problems, Settings, check_output_dir, markdown_table,
                                           option_name, publish, pyplot, results_folder, setting)

from ..harness import HOLDS_LOSS_MARGIN as LOSS_MARGIN
from ..harness import HOLDS_MATCH_MARGIN as MATCH_MARGIN
from ..study import StudyRun, Verdict


def study_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per contender of one study: seeds that hold, mean loss ratio and exact-match gap at the baseline's time, and
    the speed-ups to the baseline's final loss and exact match (seeds that reach them), each seed's by
    :meth:`Verdict.of <dropbp.benchmarks.study.Verdict.of>`."""
    runs = [StudyRun.from_dict(r) for r in result["runs"]]
    baseline = {r.seed: r for r in runs if r.kind == "baseline"}
    longer = {(r["label"], r["seed"]): StudyRun.from_dict(r) for r in result.get("equal_time_runs", [])}
    rows = []
    for row in result["summary"]:
        if row.get("kind", row.get("family")) == "baseline":
            continue
        mine = [longer.get((r.label, r.seed), r) for r in runs if r.label == row["label"]]
        verdicts = [Verdict.of(run, baseline[run.seed]) for run in mine]
        rows.append({"label": row["label"], "seeds": len(mine), "holds": sum(v.holds for v in verdicts),
                     "loss_ratio": statistics.fmean(v.loss_ratio for v in verdicts),
                     "match_gap": statistics.fmean(v.match_gap or 0.0 for v in verdicts),
                     "epochs": statistics.fmean(_epochs(r) for r in mine),
                     "drop": statistics.fmean(r.realized_drop_fraction for r in mine),
                     "loss_speedup": [v.loss_speedup for v in verdicts if v.loss_speedup is not None],
                     "match_speedup": [v.match_speedup for v in verdicts if v.match_speedup is not None]})
    return rows


def _epochs(run: StudyRun) -> float:
    return run.notes.get("epochs", 1.0)


def _speedups(values: list[float], seeds: int) -> str:
    return f"{statistics.fmean(values):.2f}x ({len(values)}/{seeds})" if values else f"not reached (0/{seeds})"


def study_name(result: dict[str, Any]) -> str:
    """The study's regime and task family, and its seeds where they are not the default 0, 1, 2."""
    s = result["settings"]
    seeds = [int(seed) for seed in s.get("seeds", (0, 1, 2))]
    named = "" if seeds == [0, 1, 2] else ", seeds " + ", ".join(str(seed) for seed in seeds)
    return f"{s.get('regime', 'learn')}, {s.get('family', 'strings')}{named}"


def verdict_markdown(results: list[dict[str, Any]]) -> str:
    """The table over every study."""
    table = []
    for result in results:
        study, times = study_name(result), "model" if result.get("step_time_model") else "step clock"
        for row in study_rows(result):
            table.append((study, times, row["label"], f"{row['epochs']:.2f}", f"{row['drop']:.2f}",
                          f"{(row['loss_ratio'] - 1) * 100:+.1f}%",
                          f"{row['match_gap'] * 100:+.1f}", f"{row['holds']}/{row['seeds']}",
                          _speedups(row["loss_speedup"], row["seeds"]), _speedups(row["match_speedup"], row["seeds"])))
    return "\n".join([
        "# DropBP given the baseline's wall time: every regime study", "",
        "Each contender at its best learning rate, trained for the baseline's wall time (epochs column; 1 x the "
        "study's epochs where it was not faster), against the baseline of the same seed. *Realised drop*: the "
        "share of the branches' backward FLOPs dropped over the run (for freezing, LayerDrop and PLD, what their "
        "engine reports). *Holds*: seeds where its "
        f"final validation loss is at most +{LOSS_MARGIN * 100:g}% and its exact match at most "
        f"{MATCH_MARGIN * 100:g} points below. *Sooner*: the baseline's time to its own final validation loss (exact "
        "match) over the contender's, mean over the seeds that reach it. The paper reports the same loss 1.5x "
        "sooner. *Times*: read through the study's step-time model, or each run's own step clock (the first "
        "studies, before the model).", "",
        markdown_table(["study", "times", "contender", "epochs", "realised drop", "val loss vs baseline",
                        "exact match (pts)", "holds", "sooner to the baseline's loss", "sooner to its exact match"],
                       table), ""])


def verdict_figure(document: dict[str, Any]) -> Any:
    """Final validation loss over the baseline's, given its time: one bar per contender and study (log scale)."""
    plt = pyplot()
    rows = [(study["study"], row) for study in document["studies"] for row in study["rows"]]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.22 * len(rows)))
    colours = {name: f"C{k}" for k, name in enumerate(dict.fromkeys(study for study, _ in rows))}
    ax.barh(range(len(rows)), [row["loss_ratio"] for _, row in rows], color=[colours[s] for s, _ in rows], left=0)
    ax.set_yticks(range(len(rows)), [f"{row['label'][:32]} ({study})" for study, row in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(1.0 + LOSS_MARGIN, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="final validation loss / the baseline's, given its time (log; dotted: the margin)",
           title="every regime study")
    fig.tight_layout()
    return fig


@dataclass
class VerdictSettings(Settings):
    """The regime results to gather and where the table goes."""

    results: tuple[Path, ...] = setting((), "regime-*.json files written by dropbp bench regime", positional=True,
                                        metavar="RESULT.json", allowed="one or more regime result files")
    out: Path | None = setting(None, "where regime-verdict.{json,md,png} are written (default: results/verdict)",
                               allowed=FOLDER)

    def check(self, p: Problems, name: Naming = option_name) -> None:
        super().check(p, name)
        files = "RESULT.json" if name is option_name else name("results")
        if not self.results:
            p.add(f"{files}: give at least one regime-*.json written by dropbp bench regime.")
        for path in self.results:
            p.check(load_regime_result, Path(path), files)
        p.check(check_output_dir, name("out"), self.out if self.out is not None else Path("results"))


def load_regime_result(path: Path, field: str = "RESULT.json") -> dict[str, Any]:
    """One regime study's result, refused with one line when it is missing, unreadable or another benchmark's."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{field} {path}: not a readable JSON result ({type(err).__name__}); give the "
                          "regime-*.json files dropbp bench regime writes.") from None
    if not isinstance(result, dict) or "runs" not in result or "summary" not in result:
        raise ConfigError(f"{field} {path}: not a dropbp bench regime result (no runs and summary).")
    return result


def main(settings: VerdictSettings, *, progress: bool = True) -> dict[str, Any]:
    """``dropbp bench regime-verdict``: read the results, write ``regime-verdict.{json,md,png}`` (atomically, as one
    set) and print the table."""
    settings.validate()
    results = [load_regime_result(Path(path)) for path in settings.results]
    document = {"benchmark": "regime-verdict", "files": [str(path) for path in settings.results],
                "studies": [{"study": study_name(r), "rows": study_rows(r)} for r in results]}
    publish(results_folder(settings.out, "verdict"), "regime-verdict", document, verdict_markdown(results),
            verdict_figure(document))
    return document
