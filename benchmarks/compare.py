"""``dropbp bench compare DIR...``: throughput results from several devices or clusters side by side.

Each folder holds a ``throughput.json`` written by ``dropbp bench throughput`` on some machine (an A100 beside a
Gaudi2, in the paper's case). The comparison lines them up per drop rate: step time, tokens/s and the throughput
increase over each device's own baseline, with the paper's increases beside them, as a table and a plot.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbp.core.errors import ConfigError
from dropbp.recipes.for_benchmarks import (FOLDER, Naming, Problems, Settings, check_output_dir, markdown_table,
                                           option_name, publish, pyplot, results_folder, setting)

from .paper import PAPER_THROUGHPUT
from .throughput_report import mark_paper_points, paper_line


@dataclass
class CompareSettings(Settings):
    """The result folders to compare and where the comparison goes (no device or seed: it only reads results)."""

    dirs: tuple[Path, ...] = setting((), "folders holding throughput.json (one per device or cluster)",
                                     positional=True, metavar="DIR",
                                     allowed="one or more folders, each holding a throughput.json from dropbp bench throughput")
    out: Path | None = setting(None, "where compare.{json,md,png} are written (default: results/compare)",
                               allowed=FOLDER)

    def check(self, p: Problems, name: Naming = option_name) -> None:
        """Record every problem in ``p`` (``name``: how errors call a field)."""
        super().check(p, name)
        dirs = "DIR" if name is option_name else name("dirs")
        if len(self.dirs) < 1:
            p.add(f"{dirs}: give at least one folder holding a throughput.json (usually two or more).")
        for folder in self.dirs:
            if not (Path(folder) / "throughput.json").is_file():
                p.add(f"{dirs} {folder}: no throughput.json there; run 'dropbp bench throughput --out {folder}' on "
                      "that machine first (or copy its results folder here).")
            else:
                p.check(load_throughput, Path(folder))  # unreadable or foreign results, all reported together
        p.check(check_output_dir, name("out"), self.out if self.out is not None else Path("results"))


def load_throughput(folder: Path) -> dict[str, Any]:
    """One folder's throughput result, with a readable name for its column."""
    path = Path(folder) / "throughput.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"DIR {folder}: throughput.json is not UTF-8 text.") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"DIR {folder}: throughput.json is not valid JSON ({err.msg}, line {err.lineno}).") from None
    if not isinstance(result, dict) or result.get("benchmark") != "throughput" or "baseline" not in result \
            or "runs" not in result:
        raise ConfigError(f"DIR {folder}: throughput.json is not a 'dropbp bench throughput' result.")
    result["source"] = str(folder)
    result["name"] = f"{Path(folder).resolve().name}: {result.get('device_name', '?')} ({result.get('device', '?')})"
    return result


def compare(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The side-by-side document: per device its setting and per drop rate its increase over its own baseline."""
    devices = []
    for result in results:
        devices.append({
            "name": result["name"], "source": result["source"], "device": result.get("device"),
            "model": result.get("model"), "method": result.get("method"), "dtype": result.get("dtype"),
            "seq_len": result.get("seq_len"), "batch_size": result.get("batch_size"),
            "sampler": result.get("sampler"),
            "baseline_step_s": result["baseline"]["step_time_s"],
            "baseline_tokens_per_s": result["baseline"]["tokens_per_s"],
            "increase": {f"{run['drop_rate']:g}": run["throughput_increase"] for run in result["runs"]},
            "tokens_per_s": {f"{run['drop_rate']:g}": run["tokens_per_s"] for run in result["runs"]},
        })
    rates = sorted({float(rate) for device in devices for rate in device["increase"]})
    return {"benchmark": "compare", "devices": devices, "drop_rates": rates, "paper_reference": PAPER_THROUGHPUT}


def compare_markdown(doc: dict[str, Any]) -> str:
    """The setting of each device, then throughput increase per drop rate, the paper's beside them."""
    setting_rows = [(d["name"], d["source"], d["model"], d["method"], d["dtype"], f"{d['batch_size']} x {d['seq_len']}",
                     d["sampler"], f"{d['baseline_step_s'] * 1e3:.1f}", round(d["baseline_tokens_per_s"]))
                    for d in doc["devices"]]
    paper = doc["paper_reference"]
    headers = ["drop rate", *[d["name"] for d in doc["devices"]], *[f"paper {name}" for name in paper]]
    rows = []
    for rate in doc["drop_rates"]:
        key = f"{rate:g}"
        cells = [f"{d['increase'][key]:+.0%}" if key in d["increase"] else "—" for d in doc["devices"]]
        cells += [f"{ref['throughput_increase']:+.0%}" if ref["drop_rate"] == rate else "" for ref in paper.values()]
        rows.append((key, *cells))
    return "\n".join([
        "# Throughput across devices", "",
        markdown_table(["device", "results", "model", "method", "dtype", "batch x seq", "sampler", "baseline step (ms)",
                        "baseline tokens/s"], setting_rows), "",
        "Throughput increase over each device's own unwrapped baseline:", "",
        markdown_table(headers, rows), "",
        paper_line(paper),
    ])


def compare_figure(doc: dict[str, Any]) -> Any:
    """Grouped bars: throughput increase per drop rate, one colour per device, the paper's points marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    count = len(doc["devices"])
    width = 0.8 / max(count, 1) * 0.1
    for i, device in enumerate(doc["devices"]):
        rates = [float(r) for r in device["increase"]]
        offsets = [r + (i - (count - 1) / 2) * width for r in rates]
        ax.bar(offsets, [100 * v for v in device["increase"].values()], width, label=device["name"])
    mark_paper_points(ax, doc["paper_reference"])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("drop rate p")
    ax.set_ylabel("throughput increase vs own baseline (%)")
    ax.set_title("DropBP throughput across devices")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(settings: CompareSettings, *, progress: bool = True) -> dict[str, Any]:
    """Validate, read every folder, write ``compare.{json,md,png}``, print the table."""
    settings.validate()
    doc = compare([load_throughput(Path(folder)) for folder in settings.dirs])
    out = results_folder(settings.out, "compare")
    publish(out, "compare", doc, compare_markdown(doc), compare_figure(doc))
    return doc
