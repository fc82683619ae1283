"""The regime benchmark's report: per-contender statistics over seeds, the Markdown tables and the figure."""
from __future__ import annotations

import statistics
from typing import Any

from dropbp.recipes.for_benchmarks import markdown_table, pyplot

from ..study import Study, StudyRun, Verdict


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _speedups(runs: list[StudyRun], study: Study) -> list[float]:
    """Per run that reaches its seed's baseline final validation loss: how many times sooner (the verdict's)."""
    verdicts = [Verdict.of(run, study.baseline(run.seed)) for run in runs]
    return [v.loss_speedup for v in verdicts if v.loss_speedup is not None]


def summarise(study: Study) -> list[dict[str, Any]]:
    """Per contender, over seeds: final loss and accuracy, time, time saved and speed-up to the baseline's final
    loss (each seed against the baseline of the same seed); and the same at the baseline's time, where the
    contender trained for another length."""
    rows = []
    for contender in study.contenders:
        mine = [r for r in study.runs if r.label == contender.label]
        base = [study.baseline(r.seed) for r in mine]
        speedups = _speedups(mine, study)
        longer = [r for r in study.at_equal_time(contender.label) if r.steps != mine[0].steps]
        longer_speedups = _speedups(longer, study)
        rows.append({
            "equal_time": None if not longer else {
                "epochs": statistics.fmean(r.notes.get("epochs", 1.0) for r in longer),
                "final_val_loss": _spread([r.final_val_loss for r in longer]),
                "final_exact_match": _spread([r.final_exact_match or 0.0 for r in longer]),
                "train_time_s": _spread([r.train_time_s for r in longer]),
                "reached_target": len(longer_speedups), "seeds": len(longer),
                "speedup_to_target": _spread(longer_speedups) if longer_speedups else None},
            "label": contender.label, "kind": contender.kind, "lr": mine[0].lr, "seeds": len(mine),
            "final_val_loss": _spread([r.final_val_loss for r in mine]),
            "final_exact_match": _spread([r.final_exact_match or 0.0 for r in mine]),
            "train_time_s": _spread([r.train_time_s for r in mine]),
            "time_saved": _spread([1 - r.train_time_s / b.train_time_s for r, b in zip(mine, base)]),
            "flops_saved": _spread([1 - r.train_flops / b.train_flops for r, b in zip(mine, base)]),
            "accuracy_gap": _spread([(r.final_exact_match or 0.0) - (b.final_exact_match or 0.0)
                                     for r, b in zip(mine, base)]),
            "reached_target": len(speedups), "speedup_to_target": _spread(speedups) if speedups else None,
        })
    return rows


def _kind(row: dict[str, Any]) -> str:
    """A row's or run's kind of contender (results written before the one study runner call it ``family``)."""
    return row.get("kind", row.get("family", ""))


def _pm(spread: dict[str, float] | None, fmt: str, scale: float = 1.0) -> str:
    if spread is None:
        return "not reached"
    return f"{format(spread['mean'] * scale, fmt)} ± {format(spread['std'] * scale, fmt)}"


def regime_markdown(result: dict[str, Any]) -> str:
    """The table: per contender, chosen rate, final loss and accuracy, time saved, speed-up to the target."""
    rows = [(r["label"], f"{r['lr']:g}", _pm(r["final_val_loss"], ".4f"), _pm(r["final_exact_match"], ".1f", 100),
             _pm(r["accuracy_gap"], "+.1f", 100), _pm(r["time_saved"], "+.0f", 100), _pm(r["flops_saved"], ".0f", 100),
             f"{r['reached_target']}/{r['seeds']}",
             "—" if _kind(r) == "baseline" else _pm(r["speedup_to_target"], ".2f"))
            for r in result["summary"]]
    equal_rows = [(r["label"], f"{r['equal_time']['epochs']:.2f}", _pm(r["equal_time"]["final_val_loss"], ".4f"),
                   _pm(r["equal_time"]["final_exact_match"], ".1f", 100),
                   f"{r['equal_time']['reached_target']}/{r['equal_time']['seeds']}",
                   _pm(r["equal_time"]["speedup_to_target"], ".2f"))
                  for r in result["summary"] if r.get("equal_time")]
    equal_table = [] if not equal_rows else [
        "**Equal wall time.** Each contender whose time differs from the baseline's by more than 5%, trained again "
        "for the baseline's time (more or fewer epochs at its own speed, its chosen learning rate, cosine over the "
        "run):", "",
        markdown_table(["contender", "epochs", "final val loss", "exact match %", "reached target",
                        "speed-up to target"], equal_rows), ""]
    sweep_rows = [(label, *[f"{s['final_val_loss']:.4f}" for s in runs], f"{result['chosen_lr'][label]:g}")
                  for label, runs in result["sweep"].items() if runs]  # one learning rate: no sweep was run
    s, m, p = result["settings"], result["model"], result["pretrain"]
    lrs = [f"lr {lr:g}" for lr in s["lrs"]]
    return "\n".join([
        f"# Time to accuracy, {s.get('regime', 'learn')} regime, {s.get('family', 'strings')} tasks "
        f"({result['method']}) on {result['device_name']} ({result['device']})", "",
        f"Model: Llama, {m['num_hidden_layers']} layers, width {m['hidden_size']}, pre-trained "
        f"{p['pretrain_steps']} steps on {p['data']} (loss {p['loss_previous_tenth']:.3f} -> "
        f"{p['loss_last_tenth']:.3f} over the last two tenths). Fine-tuning: {result['method']} rank "
        f"{s['lora_rank']} on all four {s.get('family', 'strings')} tasks ({result['train_examples']} examples, {s['epochs']:g} epochs = "
        f"{result['steps_per_run']} steps of {s['batch_size']}, cosine learning rate), validated on "
        f"{result['validation_examples']} examples of held-out words. Exact match: every answer token greedy-correct. "
        f"LayerDrop, PLD and freezing are set to DropBP's training FLOPs at p={s['contender_rate']:g}. "
        f"{s['threads']} CPU thread(s) per run; times are the {result.get('clock', 'wall time')}.", "",
        f"Mean ± standard deviation over seeds {', '.join(map(str, s['seeds']))}, each at its contender's best "
        "learning rate from the sweep. *Time saved* and *accuracy gap* compare equal epochs with the baseline of "
        "the same seed; *speed-up* is the baseline's time to its own final validation loss over the contender's "
        "time to the same loss (only seeds that reach it).", "",
        "**Equal epochs.**", "",
        markdown_table(["contender", "lr", "final val loss", "exact match %", "acc. gap (pts)", "time saved %",
                        "FLOPs saved %", "reached target", "speed-up to target"], rows), "",
        *equal_table,
        *(["Learning-rate sweep (seed 0, final validation loss):", "",
           markdown_table(["contender", *lrs, "chosen"], sweep_rows), ""] if sweep_rows else
          [f"One learning rate ({', '.join(lrs)}): no sweep.", ""]),
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
    styles = {"baseline": "-", "dropbp": "-", "sensitivity": "--", "layerdrop": ":", "pld": ":", "freeze": "-.",
              "schedule": "--", "freeze-dropbp": "-."}
    palette = plt.get_cmap("tab10").colors
    colours = {row["label"]: "k" if _kind(row) == "baseline" else palette[i % len(palette)]
               for i, row in enumerate(result["summary"])}
    for col, (source, axis, title) in enumerate(columns):
        for row in result["summary"]:
            mine = [r for r in result[source] if r["label"] == row["label"]]
            if source != "runs" and _kind(row) == "baseline":
                mine = [r for r in result["runs"] if _kind(r) == "baseline"]
            if not mine:
                continue
            for ax, metric in ((axes[0][col], "val_loss"), (axes[1][col], "exact_match")):
                ax.plot(*_mean_curve(mine, axis, metric), linestyle=styles.get(_kind(row), "-"),
                        color=colours[row["label"]], label=row["label"] if (ax is axes[0][0]) else None)
        axes[0][col].set_title(title)
        axes[0][col].set_yscale("log")
        axes[1][col].set_xlabel("training TFLOPs (FLOPs model)" if axis == "flops" else "training wall time (s)")
    axes[0][0].set_ylabel("validation loss")
    axes[1][0].set_ylabel("exact match")
    axes[0][0].legend(fontsize=7, ncol=2)
    s = result["settings"]
    fig.suptitle(f"{s.get('regime', 'learn')} regime, {s.get('family', 'strings')} tasks: mean of seeds, each "
                 "contender at its best learning rate")
    fig.tight_layout()
    return fig
