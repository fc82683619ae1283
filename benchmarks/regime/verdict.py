"""One table over several regime studies: per study and contender, how it ends given the baseline's wall time
against the baseline of the same seed, and how much sooner it reaches the baseline's final loss and exact match.

``python -m dropbp.benchmarks.regime.verdict RESULT.json ... [-o OUT.md]`` (the ``regime-*.json`` files that
``dropbp bench regime`` writes). A contender *holds* in a seed when, given the baseline's time (its equal-time run;
its equal-epochs run when it was not faster), its final validation loss is at most the baseline's + ``loss_margin``
(relative) and its exact match at least the baseline's - ``match_margin``. *Sooner* is the baseline's time to its own
final validation loss (and, separately, exact match) over the contender's, read off the equal-time curves.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from dropbp.recipes.for_benchmarks import markdown_table

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


def main(argv: list[str] | None = None) -> None:
    """Read the result files, print the table (and write it with ``-o``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    text = verdict_markdown([json.loads(path.read_text(encoding="utf-8")) for path in args.results])
    print(text)
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
