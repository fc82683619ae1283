"""One technique assembly: a knob added to the DropBP engine (and, for recipes, to the ``dropbp`` section) reaches
``dropbp train``, the study trainer and the Trainer callback through build_technique, with no edit to any of them;
and every driver attaches the same allocation knobs."""
from __future__ import annotations

import dataclasses

import pytest

import dropbp.core.assembly as assembly
import dropbp.core.techniques as techniques
from dropbp.backends import get as get_backend
from dropbp.benchmarks.study.contender import Contender, contender_trainer
from dropbp.core import AllocationSpec, DropBP, TechniqueSpec, build_technique, engine_keywords
from dropbp.core.errors import ConfigError
from dropbp.recipes.config.dropbp_section import DropBPSection
from dropbp.recipes.config.fields import setting
from dropbp.recipes.config.registry import shipped
from dropbp.recipes.config.schema import load_recipe
from dropbp.recipes.finetune import FineTune
from dropbp.recipes.training.hf_trainer import DropBPCallback
from dropbp.recipes.training.rates import technique_spec
from tests.conftest import tiny_model

from ..recipes.test_finetune import TINY


class KnobDropBP(DropBP):
    """The engine with a knob it did not have: ``new_knob``, kept on the engine."""

    def __init__(self, model, drop_rate=0.5, *, new_knob: int = 0, **engine):
        super().__init__(model, drop_rate, **engine)
        self.new_knob = new_knob


@dataclasses.dataclass
class KnobSection(DropBPSection):
    """The recipe's ``dropbp`` section with the knob's field: the only edit a recipe needs."""

    new_knob: int = setting(0, "a knob added by this test")


@pytest.fixture
def knob(monkeypatch):
    """The engine with ``new_knob`` wherever techniques build it."""
    monkeypatch.setattr(assembly, "DropBP", KnobDropBP)
    monkeypatch.setattr(techniques, "DropBP", KnobDropBP)
    assert "new_knob" in engine_keywords()


def test_a_new_engine_knob_reaches_dropbp_train(knob, tmp_path):
    recipe = load_recipe(shipped()["tiny-tasks"], [*TINY, "train.steps=2"], device="cpu")
    fields = {f.name: getattr(recipe.dropbp, f.name) for f in dataclasses.fields(DropBPSection)}
    recipe = dataclasses.replace(recipe, dropbp=KnobSection(**fields, new_knob=7))
    job = FineTune(recipe, tmp_path / "run", progress=False)
    job.setup()
    try:
        assert isinstance(job.dropbp, KnobDropBP) and job.dropbp.new_knob == 7
        assert job.technique.allocation is not None and job.technique.allocation.mode == "sensitivity"
    finally:
        job.cleanup()


def test_a_new_engine_knob_reaches_the_study_trainer(knob):
    contender = Contender("knob", "dropbp", "dropbp", 0.5, engine=(("new_knob", 5),))
    trainer = contender_trainer(tiny_model(), contender, 1e-3, get_backend("cpu"), total_steps=4, seq_len=16, seed=0)
    try:
        assert isinstance(trainer.technique.engine, KnobDropBP) and trainer.technique.engine.new_knob == 5
    finally:
        trainer.close()
    assert "engine=" not in repr(Contender("plain"))  # cached runs' keys unchanged for contenders without it


def test_a_new_engine_knob_reaches_the_trainer_callback(knob):
    model = tiny_model()
    callback = DropBPCallback(drop_rate=0.5, seed=2, new_knob=3)
    state = type("State", (), {"max_steps": 10, "global_step": 0})()
    callback.on_train_begin(None, state, None, model=model)
    try:
        assert isinstance(callback.dropbp, KnobDropBP) and callback.dropbp.new_knob == 3
        assert callback.dropbp.seed == 2
    finally:
        callback.on_train_end(None, state, None)
        callback.dropbp.remove()


def test_every_driver_gets_the_same_allocation_knobs():
    section = DropBPSection(drop_rate=0.5, allocation="online", reallocate_every=7, allocator="optimal",
                            allocate_at=0.2)
    spec = technique_spec(section, sampler="bernoulli", total_steps=20, seq_len=16)
    assert spec.allocation == AllocationSpec("online", 0.2, "fast", "optimal", 7)
    assert technique_spec(section, sampler="bernoulli", total_steps=20, seq_len=16, ranks=2).allocation.mode == "uniform"
    model = tiny_model()
    technique = build_technique(model, spec, total_steps=20, seed=0)
    try:
        allocation = technique.allocation
        assert (allocation.mode, allocation.every, allocation.allocator) == ("online", 7, "optimal")
    finally:
        technique.remove()
    callback = DropBPCallback(allocation=spec.allocation, drop_rate=0.5)
    assert callback.allocation is spec.allocation


def test_dropbp_off_builds_nothing_and_bad_allocations_are_refused():
    assert build_technique(tiny_model(), TechniqueSpec(), total_steps=4, seed=0) is None
    with pytest.raises(ConfigError, match="allocation must be one of"):
        AllocationSpec("by-hand")
    with pytest.raises(ConfigError, match="every must be a positive"):
        AllocationSpec("online", every=0)
