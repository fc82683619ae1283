"""The gradient-agreement diagnostic: exact at drop rate 0, and what DropBP does to a block's gradient at 0.5 is
measured, not assumed (a block whose branches are dropped gets none; the top block, with nothing above it but the
head, keeps the exact direction whenever it trains); blocks found by structure; and the `dropbp bench` entry on a
recipe, its settings checked like every benchmark's."""
from __future__ import annotations

import pytest

from dropbp.benchmarks.gradient_agreement import (GradientAgreementSettings, block_index, gradient_agreement, main,
                                                  markdown)
from dropbp.core.errors import ConfigError
from dropbp.recipes.training.step import causal_lm_loss

from ..conftest import tiny_model, token_batch


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_blocks_are_found_by_structure_whatever_the_model_calls_them(arch):
    model = tiny_model(arch, "lora", layers=3)
    blocks = block_index(model)
    assert sorted(set(blocks.values())) == [0, 1, 2]
    for name, block in blocks.items():
        assert f".{block}." in name  # llama: model.layers.N, gpt2: transformer.h.N
    assert not any("embed" in name or "wte" in name for name in blocks)  # outside every block: not listed


@pytest.mark.slow
def test_the_bench_entry_measures_a_recipe_and_publishes_its_table(tmp_path):
    settings = GradientAgreementSettings(recipe="tiny-tasks", device="cpu", out=tmp_path, masks=2,
                                         allocations=("uniform", "depth"), drop_rates=(0.5,), after_steps=1)
    result = main(settings, progress=False)
    labels = [s["label"] for s in result["settings"]]
    assert labels == ["exact, the next batch", "uniform p=0.5", "depth p=0.5"]
    layers = {row["block"] for s in result["settings"] for row in s["blocks"]} - {"all", -1}
    assert layers == set(range(len(layers))) and len(layers) >= 2
    assert result["options"]["masks"] == 2 and (tmp_path / "gradient-agreement.md").is_file()
    with pytest.raises(ConfigError, match="--allocations must each be one of uniform, depth"):
        GradientAgreementSettings(allocations=("nope",)).validate()


def test_nothing_dropped_is_the_exact_gradient():
    rows = gradient_agreement(tiny_model("llama", "lora", layers=3), causal_lm_loss, token_batch(), 0.0, masks=2)
    assert [r["block"] for r in rows] == [0, 1, 2, "all"]
    for row in rows:
        assert row["masks_trained"] == 2
        assert row["cos_when_trained"] == pytest.approx(1.0) and row["norm_ratio"] == pytest.approx(1.0)
        assert row["mean_cos"] == pytest.approx(1.0) and row["mean_norm_ratio"] == pytest.approx(1.0)


def test_dropping_changes_the_lower_blocks_gradient_and_the_table_says_so():
    model = tiny_model("llama", "lora", layers=3)
    rows = gradient_agreement(model, causal_lm_loss, token_batch(), 0.5, masks=6, seed=1)
    assert all(0 <= r["masks_trained"] <= 6 for r in rows)
    assert any(r["masks_trained"] < 6 for r in rows)  # some masks drop both of a block's branches
    assert min(r["norm_ratio"] for r in rows) < 1.0
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    assert rows[-1]["block"] == "all" and rows[-1]["masks_trained"] == 6  # some branch trains under every mask
    result = {"recipe": "tiny", "method": "lora", "masks": 6, "after_steps": 0,
              "settings": [{"label": "uniform p=0.5", "drop_fraction": 0.5, "blocks": rows}]}
    table = markdown(result)
    assert "| uniform p=0.5 | 0.500 " in table and table.count("\n| ") == 3 + len(rows)  # summary: head + 1 row; per block: head + rows


def test_per_branch_rates_are_what_the_engine_drops():
    model = tiny_model("llama", "lora", layers=3)
    keep_top = [0.9, 0.9, 0.9, 0.9, 0.0, 0.0]  # the top block's two branches never drop
    rows = gradient_agreement(model, causal_lm_loss, token_batch(), 0.5, masks=4, seed=2, rates=keep_top)
    top = next(r for r in rows if r["block"] == 2)
    assert top["masks_trained"] == 4 and top["mean_cos"] == pytest.approx(1.0)  # nothing above it was dropped
