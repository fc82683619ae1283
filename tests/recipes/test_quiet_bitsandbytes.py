"""PEFT imports bitsandbytes when it first wraps a linear layer (even for LoRA), and bitsandbytes then warns about an
optional CPU kernel package on machines with AVX512-BF16: that warning must not be the first line of a LoRA run."""
from __future__ import annotations

import logging

import peft

from dropbp.recipes.model import build

from ..conftest import tiny_model


def test_lora_wrapping_runs_with_bitsandbytes_logging_errors_only(monkeypatch):
    seen = []
    real = peft.get_peft_model

    def spy(model, config):
        seen.append(logging.getLogger("bitsandbytes").getEffectiveLevel())
        return real(model, config)

    monkeypatch.setattr(peft, "get_peft_model", spy)
    logger = logging.getLogger("bitsandbytes")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    model = build.add_lora(tiny_model("llama", "full"), build.lora_config(4, 8.0, 0.0, ["all-linear"]), seed=0)
    assert seen == [logging.ERROR] and any("lora_A" in n for n, _ in model.named_parameters())
    assert logger.level == logging.NOTSET  # restored afterwards
