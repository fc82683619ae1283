"""Presenting a throughput result: the Markdown table, the target checks and the plot."""
from __future__ import annotations

from typing import Any

from dropbp.recipes.for_benchmarks import markdown_table, mib, pyplot

HEADERS = ["config", "drop rate", "realised q", "step (s)", "tokens/s", "increase", "ideal step (s)", "efficiency",
           "saved act (MiB)", "ideal saved (MiB)", "peak (MiB)", "compiles"]


def _row(entry: dict[str, Any]) -> list[Any]:
    increase = entry.get("throughput_increase")
    return [entry["label"], entry["drop_rate"], entry["realized_drop_fraction"], entry["step_time_s"],
            round(entry["tokens_per_s"]), None if increase is None else f"{increase:+.1%}",
            entry.get("ideal_step_time_s"), entry.get("efficiency"), mib(entry["saved_activation_bytes"]),
            mib(entry.get("saved_activation_ideal_bytes")), mib(entry["peak_mem_bytes"]), entry["graph_compiles"]]


def throughput_table(result: dict[str, Any]) -> str:
    """The side-by-side table: baseline, each drop rate, all dropped."""
    rows = [_row(result["baseline"]), *(_row(r) for r in result["runs"]), _row(result["all_dropped"])]
    return markdown_table(HEADERS, rows)


def paper_line(paper: dict[str, Any]) -> str:
    """The paper's throughput increases, one sentence, for beside a table."""
    return "Paper, for reference (not measured here): " + "; ".join(
        f"{name}: {ref['throughput_increase']:+.0%} at p={ref['drop_rate']} ({ref['setting']})"
        for name, ref in paper.items())


def mark_paper_points(ax: Any, paper: dict[str, Any]) -> None:
    """The paper's throughput increases as marked points on a (drop rate, increase %) plot."""
    markers = {"a100": ("*", "#d62728"), "gaudi2": ("D", "#2ca02c")}
    for name, ref in paper.items():
        marker, colour = markers.get(name, ("o", "k"))
        ax.scatter([ref["drop_rate"]], [100 * ref["throughput_increase"]], marker=marker, s=90, color=colour,
                   zorder=3, label=f"paper {name}")


def _reduction(value: float, baseline: float) -> str:
    return f"{1 - value / baseline:+.0%}" if baseline else "—"


def phase_table(result: dict[str, Any]) -> str:
    """Per-iteration timing split, as in the paper's timing table: forward, backward and total milliseconds, each
    with its reduction against the baseline (the optimizer step is in the total)."""
    base = result["baseline"]
    if "step_time_mean_s" not in base:
        return "(no forward/backward split in this result: it predates the split)"
    rows = []
    for entry in [base, *result["runs"], result["all_dropped"]]:
        rows.append([entry["label"],
                     f"{entry['forward_s'] * 1e3:.1f}", _reduction(entry["forward_s"], base["forward_s"]),
                     f"{entry['backward_s'] * 1e3:.1f}", _reduction(entry["backward_s"], base["backward_s"]),
                     f"{entry['optimizer_s'] * 1e3:.1f}",
                     f"{entry['step_time_mean_s'] * 1e3:.1f}",
                     _reduction(entry["step_time_mean_s"], base["step_time_mean_s"])])
    return markdown_table(["config", "forward (ms)", "reduction", "backward (ms)", "reduction", "optimizer (ms)",
                           "total (ms)", "reduction"], rows)


def checkpointing_section(result: dict[str, Any]) -> list[str]:
    """With checkpointing timed: every choice's step time and saved activations against the baseline; the fastest
    choice that saves no more than checkpointing alone (equal memory), and the one that saves least among those at
    least as fast as the baseline (equal speed): the pairs a user short of memory decides between."""
    checkpointed = result.get("checkpointed") or []
    if not checkpointed:
        return []
    base = result["baseline"]
    choices = [*checkpointed, *result["runs"]]
    rows = [[c["label"], f"{c['step_time_s']:.4f}", f"{c['throughput_increase']:+.1%}",
             f"{mib(c['saved_activation_bytes']):.1f}", f"{c['saved_activation_bytes'] / base['saved_activation_bytes']:.0%}",
             mib(c["peak_mem_bytes"])] for c in choices]
    alone = next(c for c in checkpointed if c["drop_rate"] is None)
    fits = [c for c in choices if c["saved_activation_bytes"] <= alone["saved_activation_bytes"] and c is not alone]
    advice = (f"At checkpointing's saved activations ({mib(alone['saved_activation_bytes']):.1f} MiB) or less, the "
               f"fastest choice is {fits and min(fits, key=lambda c: c['step_time_s'])['label'] or 'checkpointing alone'}"
               + (f", {alone['step_time_s'] / min(c['step_time_s'] for c in fits) - 1:+.0%} throughput against "
                  "checkpointing alone." if fits else "."))
    quick = [c for c in choices if c["step_time_s"] <= base["step_time_s"]]
    if quick:  # the other pair: as fast as the baseline, which choice keeps the least
        least = min(quick, key=lambda c: c["saved_activation_bytes"])
        advice += (f" At the baseline's step time or faster, the least memory is {least['label']}: "
                    f"{least['saved_activation_bytes'] / base['saved_activation_bytes']:.0%} of the baseline's saved "
                    f"activations, {least['throughput_increase']:+.0%} throughput.")
    return ["", "With activation checkpointing (non-reentrant), beside DropBP alone; saved activations as the "
            "saved-tensor hooks count them (with checkpointing: each block's input; the recomputation of one block "
            "during the backward is not in this column):", "",
            markdown_table(["config", "step (s)", "vs baseline", "saved act (MiB)", "of baseline's", "peak (MiB)"],
                           rows), "", advice]


def head_line(result: dict[str, Any]) -> list[str]:
    """What share of a step the LM head and the loss take (FLOPs model), which DropBP cannot drop."""
    head = result.get("head")
    if not head:
        return []
    where = ("every position" if head["positions"] == "all" else
             f"labelled positions only ({head['fraction_of_positions']:.1%} of them)")
    at = "; ".join(f"{label}: {share:.1%}" for label, share in head["share_at"].items())
    return ["", f"The LM head and the loss (on {where}) take {head['share_baseline']:.1%} of the baseline step's "
                f"training FLOPs (FLOPs model), and more of what DropBP leaves ({at}); DropBP cannot drop them."]


def throughput_markdown(result: dict[str, Any]) -> str:
    """The whole Markdown report: settings line, table, paper reference."""
    shape = result["model_shape"]
    paper = result["paper_reference"]
    lines = [
        f"# Throughput: {result['model']} ({result['method']}, {result['dtype']}) on {result['device_name']} "
        f"({result['device']})",
        "",
        f"hidden {shape['hidden']}, layers {shape['layers']}, heads {shape['heads']}/{shape['kv_heads']} kv, "
        f"MLP {shape['intermediate']}; batch {result['batch_size']} x seq {result['seq_len']}; sampler "
        f"{result['sampler']}; {result.get('warmup_rounds', result['settings']['warmup'])} warm-up + "
        f"{result['settings']['steps']} measured "
        "rounds, interleaved; step = forward + backward + optimizer step; medians.",
        "",
        throughput_table(result),
        "",
        "increase = T(baseline)/T - 1; ideal step = T(all dropped) + (1 - q) * (T(baseline) - T(all dropped)); "
        "efficiency = ideal / measured.",
        *head_line(result),
        "",
        "Per-iteration split (means over the measured rounds, so the phases add up to the total; the device is "
        "synchronised between phases, so on lazy-mode Gaudi the forward graph runs, and is counted, at the "
        "synchronisation after it):",
        "",
        phase_table(result),
        *checkpointing_section(result),
        "",
        paper_line(paper),
    ]
    return "\n".join(lines)


def throughput_figure(result: dict[str, Any]) -> Any:
    """Left: throughput increase per drop rate, measured vs the linear limit, paper points marked.
    Right: saved-activation memory per drop rate vs its linear limit."""
    plt = pyplot()

    runs = result["runs"]
    rates = [r["drop_rate"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.035
    left.bar([r - width / 2 for r in rates], [100 * r["throughput_increase"] for r in runs], width,
             label="measured", color="#3b75af")
    left.bar([r + width / 2 for r in rates], [100 * r["ideal_throughput_increase"] for r in runs], width,
             label="linear limit", color="#b0c4de")
    mark_paper_points(left, result["paper_reference"])
    left.axhline(0, color="grey", lw=0.8)
    left.set_xlabel("drop rate p")
    left.set_ylabel("throughput increase vs baseline (%)")
    left.set_title(f"{result['model']} {result['method']} on {result['device']}")
    left.legend(fontsize=8)
    base = result["baseline"]["saved_activation_bytes"]
    right.plot([0] + rates + [1], [mib(base)] + [mib(r["saved_activation_bytes"]) for r in runs]
               + [mib(result["all_dropped"]["saved_activation_bytes"])], "o-", label="measured")
    right.plot(rates, [mib(r["saved_activation_ideal_bytes"]) for r in runs], "x--", label="linear limit")
    right.set_xlabel("drop rate p")
    right.set_ylabel("activations saved for backward (MiB)")
    right.set_title("memory")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig
