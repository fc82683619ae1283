"""The recipe-time benchmark on a few steps: three runs per seed, equal time from measured times, the verdict."""
from __future__ import annotations

import pytest

from dropbp import backends
from dropbp.benchmarks.recipe_time import RecipeTimeSettings, recipe_time_figure, recipe_time_markdown, run_recipe_time
from dropbp.core.errors import ConfigError

SMALL = ("model.config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
         "num_key_value_heads: 1}", "train.steps=6", "train.exact_match=4", "train.micro_batch_size=8")


@pytest.mark.slow
def test_recipe_time_compares_at_the_baselines_time(tmp_path):
    settings = RecipeTimeSettings(device="cpu", overrides=SMALL, seeds=(0,), out=tmp_path)
    result = run_recipe_time(settings, backends.get("cpu"), progress=False)
    (row,) = result["seeds"]
    base, same, timed = row["baseline"], row["equal_steps"], row["equal_time"]
    assert base["drop_rate"] == 0 and same["drop_rate"] == 0.75 and base["steps"] == same["steps"] == 6
    assert same["schedule"] == "adaptive"  # the recipe as shipped
    assert timed["steps"] == max(1, round(6 * base["time_s"] / same["time_s"]))
    within = timed["val_loss"] <= base["val_loss"] * 1.03 and timed["exact_match"] >= base["exact_match"] - 0.02
    assert row["within"] == within and result["within"] == int(within)
    table = recipe_time_markdown(result)
    assert f"Within the margins in {int(within)} of 1 seeds" in table and "recipe, baseline's time" in table
    assert len(recipe_time_figure(result).axes) == 2


def test_recipe_time_settings_are_checked():
    with pytest.raises(ConfigError, match="--overrides must each look like key=value"):
        RecipeTimeSettings(overrides=("train.steps",)).validate()
    with pytest.raises(ConfigError, match="--seeds needs at least one seed"):
        RecipeTimeSettings(seeds=()).validate()
