"""A technique is one module: an options dataclass, a builder and one registration line. A toy technique registered
here, and nowhere else, trains through ``dropbp train``, the regime study's contender trainer and a loop of your own,
is validated like any recipe field, and is charged what it skips by the FLOPs model."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from dropbp import backends
from dropbp.core import LayerDrop, Technique, apply_technique, register_technique, technique_names
from dropbp.core.errors import ConfigError
from dropbp.core.step_flops import StepFlops
from dropbp.core.techniques import _REGISTRY
from dropbp.recipes.cli import main

from ..conftest import tiny_model, token_batch


@dataclass
class SkipTopOptions:
    """How many top blocks every step skips."""

    blocks: int = 1


def build_skip_top(model: torch.nn.Module, rate: float, options: SkipTopOptions, context) -> Technique:
    """Skip the top ``options.blocks`` blocks on every training step (LayerDrop with a fixed keep pattern)."""
    keep = lambda step, position, layers: 0.0 if position > layers - int(options.blocks) else 1.0  # noqa: E731
    return Technique("skip-top", policy=LayerDrop(model, 0.0, seed=context.seed, rescale=False, schedule=keep))


@pytest.fixture
def skip_top():
    register_technique("skip-top", SkipTopOptions, build_skip_top)  # the one registration line
    yield "skip-top"
    _REGISTRY.pop("skip-top")


@pytest.mark.slow  # seconds of training: make test runs it, the fast lane does not
def test_a_registered_technique_trains_through_dropbp_train(skip_top, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "tiny-tasks", "--device", "cpu", "--output-dir", str(out), "train.steps=3",
                 "train.eval_every=0", "train.exact_match=0", "dropbp.schedule.kind=constant",
                 f"dropbp.technique={skip_top}", "technique.blocks=1"])
    assert code in (0, None)
    text = capsys.readouterr().out
    assert "skip-top" in text and (out / "metrics.csv").exists()
    assert "LayerDrop" in text  # the technique's own policy is what trained


def test_its_options_are_validated_as_recipe_fields(skip_top, capsys):
    code = main(["train", "tiny-tasks", "--device", "cpu", f"dropbp.technique={skip_top}", "technique.nope=1",
                 "technique.blocks=two"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown key technique.nope; technique allows: blocks" in err and "technique.blocks must be an integer" in err
    assert skip_top in technique_names()


def test_moved_keys_are_refused_with_their_new_spelling(capsys):
    code = main(["train", "tiny-tasks", "--device", "cpu", "dropbp.technique=pld", "dropbp.pld_gamma=0.01"])
    assert code == 2 and "write technique.gamma=0.01 instead" in capsys.readouterr().err
    code = main(["train", "tiny-tasks", "--device", "cpu", "optim.schedule=linear"])  # the learning rate's, renamed
    err = capsys.readouterr().err
    assert code == 2 and "write optim.lr_schedule='linear' instead" in err and "dropbp.schedule" in err


def test_a_registered_technique_runs_in_the_study_runners_trainer(skip_top):
    from dropbp.benchmarks.regime import RegimeSettings, TaskWorkload
    from dropbp.benchmarks.study import Contender

    settings = RegimeSettings(device="cpu", model_overrides=dict(hidden_size=32, intermediate_size=64,
                                                                 num_hidden_layers=4, num_attention_heads=4,
                                                                 num_key_value_heads=2, vocab_size=256),
                              warmup_steps=1, seq_len=16)
    workload = TaskWorkload(settings, {}, None, backends.get("cpu"))
    trainer = workload.trainer(Contender("skip the top block", "toy", skip_top, 0.0, (("blocks", 1),)), 1e-3, 0, 4)
    ids = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    full = StepFlops(trainer.model, 16).step(ids.numel())
    for step in range(2):
        loss, flops = trainer.step(step, ids, ids)
        assert torch.isfinite(torch.tensor(loss)) and flops < full  # charged for the block it skipped
    assert trainer.close() == pytest.approx(0.25)  # one of four blocks skipped on every step


def test_a_registered_technique_in_your_own_loop(skip_top):
    model = tiny_model("llama", layers=2)
    technique = apply_technique(model, skip_top, 0.0, options={"blocks": 1})
    flops = StepFlops(model, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = token_batch()
    for step in range(2):
        technique.before_step(step, batch)
        technique.policy.begin_step(step)
        loss = model(input_ids=batch, labels=batch).loss
        technique.policy.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        assert technique.step_effect(flops.names) == {"trained_from": 0, "skipped_blocks": [0.0, 1.0]}
    assert model.model.layers[1].self_attn.q_proj.weight.grad is None
    technique.remove()
    with pytest.raises(ConfigError, match=r"unknown technique option\(s\) depth for skip-top; it takes: blocks"):
        apply_technique(model, skip_top, 0.0, options={"depth": 1})


def test_a_technique_without_options_refuses_a_technique_section(capsys):
    code = main(["train", "tiny-tasks", "--device", "cpu", "technique.depth=3"])
    assert code == 2 and "dropbp.technique dropbp takes no options" in capsys.readouterr().err
