"""Presenting an allocation: the per-branch table and the rates-per-layer plot (like the paper's rate figure)."""
from __future__ import annotations

from typing import Any

from dropbp.recipes.report.publish import pyplot
from dropbp.recipes.report.tables import markdown_table


def allocation_markdown(result: dict[str, Any]) -> str:
    """Header, per-branch table, and the comparison line when an exact reference was computed."""
    compare = "exact_sensitivity" in result["branches"][0]
    headers = ["branch", "layer", "kind", "FLOPs share", f"sensitivity ({result['sensitivity']['method']})", "rate"]
    if compare:
        headers.insert(5, "sensitivity (exact)")
    rows = []
    for b in result["branches"]:
        row = [b["name"], b["layer"], b["kind"], f"{b['flops_share']:.3f}", f"{b['sensitivity']:.3e}",
               f"{b['rate']:.3f}"]
        if compare:
            row.insert(5, f"{b['exact_sensitivity']:.3e}")
        rows.append(row)
    lines = [
        f"# Allocation: {result['model']} ({result['method']}), drop rate {result['drop_rate']}, allocator "
        f"{result['allocator']} (cap {result['cap']})", "",
        markdown_table(headers, rows), "",
        f"FLOPs budget: asked {result['drop_rate']:.4f}, reached {result['drop_fraction']:.4f} (FLOPs-weighted drop "
        f"fraction). Sensitivity cost: {result['sensitivity']['step_equivalents']:.2f} step-equivalents "
        f"({result['sensitivity']['seconds']:.2f} s).",
    ]
    if compare:
        lines.append(f"Against exact ({result['exact']['step_equivalents']:.0f} step-equivalents, "
                     f"{result['exact']['seconds']:.2f} s): Spearman rank correlation {result['spearman']:.3f}.")
    return "\n".join(lines)


def allocation_figure(result: dict[str, Any]) -> Any:
    """Left: rate per layer for attention and MLP branches. Right: sensitivity per layer (log scale)."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker in (("attn", "o"), ("mlp", "s")):
        branches = [b for b in result["branches"] if b["kind"] == kind]
        layers = [b["layer"] for b in branches]
        left.plot(layers, [b["rate"] for b in branches], marker=marker, label=kind)
        right.semilogy(layers, [max(b["sensitivity"], 1e-30) for b in branches], marker=marker,
                       label=f"{kind} ({result['sensitivity']['method']})")
        if "exact_sensitivity" in branches[0]:
            right.semilogy(layers, [max(b["exact_sensitivity"], 1e-30) for b in branches], marker=marker, ls=":",
                           label=f"{kind} (exact)")
    left.axhline(result["drop_rate"], color="grey", ls="--", lw=0.8, label="target")
    left.set_xlabel("layer")
    left.set_ylabel("drop rate")
    left.set_ylim(0, 1)
    left.set_title(f"rates: {result['allocator']} allocator, p={result['drop_rate']}")
    left.legend(fontsize=8)
    right.set_xlabel("layer")
    right.set_ylabel("sensitivity")
    right.set_title("sensitivity per branch")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig
