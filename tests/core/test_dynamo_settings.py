"""Every torch._dynamo setting DropBP changes goes through one module: applied when needed, logged once, and left
alone entirely when the user opts out."""
from __future__ import annotations

import logging

import pytest
import torch._dynamo.config as dynamo_config

from dropbp.core import DropBP, dynamo_settings

from ..conftest import tiny_model


@pytest.fixture
def fresh(monkeypatch):
    """Dynamo's defaults for the two settings, and no record of earlier changes; all restored afterwards."""
    monkeypatch.setattr(dynamo_config, "skip_nnmodule_hook_guards", True)
    monkeypatch.setattr(dynamo_config, "recompile_limit", 8)
    monkeypatch.setattr(dynamo_settings, "_changes", {})
    monkeypatch.setattr(dynamo_settings, "_managed", None)
    monkeypatch.delenv(dynamo_settings.ENV_OPT_OUT, raising=False)


def test_attaching_turns_on_hook_guards_and_logs_it_once(fresh, caplog):
    caplog.set_level(logging.INFO, logger="dropbp")
    first = DropBP(tiny_model("llama"), 0.5)
    DropBP(tiny_model("llama"), 0.5)
    first.remove()
    first.attach()
    assert dynamo_config.skip_nnmodule_hook_guards is False
    logged = [r for r in caplog.records if "skip_nnmodule_hook_guards" in r.getMessage()]
    assert len(logged) == 1 and dynamo_settings.ENV_OPT_OUT in logged[0].getMessage()
    assert dynamo_settings.changes() == {"skip_nnmodule_hook_guards": (True, False)}


def test_recompile_limit_is_only_ever_raised(fresh):
    dynamo_settings.raise_recompile_limit(64)
    assert dynamo_config.recompile_limit == 64
    dynamo_settings.raise_recompile_limit(16)
    assert dynamo_config.recompile_limit == 64
    assert dynamo_settings.changes()["recompile_limit"] == (8, 64)


@pytest.mark.parametrize("how", ["environment", "function"])
def test_opting_out_leaves_dynamo_alone(fresh, monkeypatch, how):
    if how == "environment":
        monkeypatch.setenv(dynamo_settings.ENV_OPT_OUT, "0")
    else:
        dynamo_settings.set_managed(False)
    assert not dynamo_settings.managed()
    DropBP(tiny_model("llama"), 0.5)
    dynamo_settings.raise_recompile_limit(64)
    assert dynamo_config.skip_nnmodule_hook_guards is True and dynamo_config.recompile_limit == 8
    assert dynamo_settings.changes() == {}
