"""Porting recipes between clusters: the workload is kept, the hardware parts re-derived, or a clear refusal."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from dropbp.core.errors import ConfigError
from dropbp.recipes.cli import main
from dropbp.recipes.config.clusters import ClusterProfile, cluster_names, load_cluster
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import Recipe, load_recipe
from dropbp.recipes.port import global_batch, port_recipe


WORKLOAD = ("name", "model.name", "model.config", "model.tokenizer", "model.lora_rank", "model.lora_alpha",
            "model.lora_dropout", "model.lora_targets", "data", "optim", "train.steps", "train.epochs", "train.seed",
            "dropbp.drop_rate", "dropbp.pool_size", "dropbp.allocation", "dropbp.allocate_at", "dropbp.allocator",
            "dropbp.sensitivity", "dropbp.seed")


def workload(recipe: Recipe, profile: ClusterProfile | None) -> dict[str, Any]:
    """What a port must keep (the test's oracle): the fields above, the method and the global batch."""
    out: dict[str, Any] = {"method": recipe.model.method, "global_batch": global_batch(recipe, profile)}
    for key in WORKLOAD:
        value: Any = recipe
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def test_the_five_cluster_profiles_load():
    assert cluster_names() == ["a100-80g", "cpu", "gaudi2", "h100-80g", "h200"]
    gaudi = load_cluster("gaudi2")
    assert gaudi.device == "hpu" and gaudi.distributed_backend == "hccl" and gaudi.hpu_mode == "lazy"
    assert not gaudi.qlora and "mixed-fp16" not in gaudi.precisions


def test_round_trip_a100_gaudi2_a100_gives_back_the_same_recipe():
    original = load_recipe(shipped()["paper/llama3-8b-lora-oasst1"], for_run=False)
    a100, gaudi2 = load_cluster("a100-80g"), load_cluster("gaudi2")
    on_a100, _ = port_recipe(original, None, a100)
    on_gaudi2, changes = port_recipe(on_a100, a100, gaudi2)
    back, _ = port_recipe(on_gaudi2, gaudi2, a100)
    assert workload(on_gaudi2, gaudi2) == workload(on_a100, a100) == workload(original, None)
    assert back == on_a100
    assert on_gaudi2.device == "hpu" and {c.key for c in changes} >= {"device", "cluster"}
    assert all(c.reason for c in changes)


@pytest.mark.parametrize("name", sorted(shipped()))
@pytest.mark.parametrize("cluster", cluster_names())
def test_every_recipe_ports_to_every_cluster_or_is_refused_with_a_reason(name, cluster):
    recipe = load_recipe(shipped()[name], for_run=False)
    source = load_cluster(recipe.cluster) if recipe.cluster else None
    target = load_cluster(cluster)
    try:
        ported, changes = port_recipe(recipe, source, target)
    except ConfigError as err:
        reason = str(err)
        assert any(text in reason for text in ("does not fit one", "does not have", "cannot share evenly")), reason
        if recipe.model.method == "qlora" and not target.qlora:
            assert "--allow-fallback lora" in reason
        return
    assert workload(ported, target) == workload(recipe, source)
    assert global_batch(ported, target) == global_batch(recipe, source)
    assert ported.device == target.device and ported.cluster == cluster
    assert ported.train.precision in ("auto", *target.precisions)
    if target.compiles_per_mask:
        assert ported.dropbp.sampler in ("pool", "auto")
    data = ported.to_data()
    assert load_recipe(data, base_dir=recipe.base_dir, for_run=False) == ported  # the ported recipe is valid


def test_qlora_to_gaudi2_needs_the_explicit_fallback():
    recipe = load_recipe(shipped()["tiny-tasks-qlora"], for_run=False)
    with pytest.raises(ConfigError, match="--allow-fallback lora"):
        port_recipe(recipe, None, load_cluster("gaudi2"))
    ported, changes = port_recipe(recipe, None, load_cluster("gaudi2"), allow_fallback="lora")
    assert ported.model.method == "lora"
    assert any(c.key == "model.method" and "fallback" in c.reason for c in changes)


def test_checkpointing_is_suggested_where_it_makes_a_recipe_fit_and_taken_only_when_allowed(capsys):
    recipe = load_recipe(shipped()["paper/llama2-7b-lora-alpaca"], ["data.seq_len=8192", "dropbp.drop_rate=0"],
                         for_run=False)
    a100 = load_cluster("a100-80g")
    with pytest.raises(ConfigError, match="would with activation checkpointing .*--allow-fallback checkpointing"):
        port_recipe(recipe, None, a100)
    ported, changes = port_recipe(recipe, None, a100, allow_fallback="checkpointing")
    assert ported.train.gradient_checkpointing and ported.train.micro_batch_size >= 1
    assert any(c.key == "train.gradient_checkpointing" and "--allow-fallback checkpointing" in c.reason
               for c in changes)
    assert port_recipe(recipe, None, a100, allow_fallback="lora,checkpointing")[0] == ported
    # a recipe that asks for checkpointing itself is sized with it: a larger micro-batch than without
    short = load_recipe(shipped()["paper/llama2-7b-lora-alpaca"], ["data.seq_len=1024"], for_run=False)
    plain = port_recipe(short, None, a100)[0].train.micro_batch_size
    checkpointed = port_recipe(dataclasses.replace(short, train=dataclasses.replace(
        short.train, gradient_checkpointing=True)), None, a100)[0].train.micro_batch_size
    assert checkpointed > plain
    with pytest.raises(ConfigError, match="--allow-fallback takes lora and/or checkpointing"):
        port_recipe(recipe, None, a100, allow_fallback="offload")
    assert main(["port", "tiny-tasks", "--to", "gaudi2", "--allow-fallback", "everything"]) == 2
    assert "--allow-fallback takes" in capsys.readouterr().err


def test_port_command_writes_a_valid_recipe_and_refuses_cleanly(tmp_path, capsys):
    out = tmp_path / "gaudi2.yaml"
    assert main(["port", "tiny-tasks", "--to", "gaudi2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| device" in printed and "gaudi2 has hpu devices" in printed
    ported = load_recipe(out, for_run=False)
    assert ported.cluster == "gaudi2" and ported.device == "hpu"
    assert out.read_text().startswith(f"# dropbp train {out}")
    assert main(["port", "tiny-tasks-qlora", "--to", "gaudi2", "-o", str(tmp_path / "q.yaml")]) == 2
    assert "does not have" in capsys.readouterr().err and not (tmp_path / "q.yaml").exists()
