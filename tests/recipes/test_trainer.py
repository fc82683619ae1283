"""A real ``transformers.Trainer`` run with DropBP through ``DropBPCallback``: LoRA on q/v at drop rate 0.75, where
many steps leave no trainable path (both attention branches dropped); they run, and are counted as the masks
predict."""
from __future__ import annotations

import pytest
import torch

from dropbp.core import DropBP
from dropbp.recipes.training.hf_trainer import DropBPCallback



def periodic_data(count: int = 256, length: int = 32, period: int = 4, vocab: int = 64):
    """Sequences that repeat a random pattern of ``period`` tokens: learnable by attention alone."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    patterns = torch.randint(3, vocab, (count, period), generator=generator)
    ids = patterns.repeat(1, length // period)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def test_trainer_runs_with_steps_that_have_no_trainable_path(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from dropbp.core.seeding import seeded

    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    with seeded(0):  # tied embeddings: copying a token's embedding forward predicts that token, so q/v can learn
        model = get_peft_model(AutoModelForCausalLM.from_config(config),
                               LoraConfig(r=16, lora_alpha=64, target_modules=["q_proj", "v_proj"]))
    dropbp = DropBP(model, 0.75, seed=3)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=16,
                             learning_rate=1e-2, logging_steps=5, report_to=[], save_strategy="no", use_cpu=True,
                             seed=0, disable_tqdm=True, lr_scheduler_type="constant", warmup_steps=0)
    trainer = Trainer(model=model, args=args, train_dataset=periodic_data(), callbacks=[DropBPCallback(dropbp)])
    trainer.train()
    predicted = sum(not dropbp.has_trainable_path(dropbp.sampler.mask(step).tolist()) for step in range(40))
    report = dropbp.report()
    assert report["steps"] == 40 and 0 < predicted < 40
    assert report["no_trainable_path_steps"] == predicted
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1, losses  # 4.20 -> 4.01 here (seeded, CPU)


@pytest.mark.slow
def test_trainer_under_torchrun_two_cpu_ranks_agree(tmp_path):
    """Trainer drives DDP itself (accelerate, gloo on the CPU); the ranks draw the same masks with no
    communication, take the same no-gradient steps without error, and end with the same adapter weights."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("ddp_trainer_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
               str(worker), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and len(ranks[0]["masks"]) == 10
    assert ranks[0]["masks"] == ranks[1]["masks"]
    assert ranks[0]["report"] == ranks[1]["report"] > 0  # steps with no trainable path ran on both ranks
    assert ranks[0]["weights"] == ranks[1]["weights"]


def _trainer(tmp_path, callback, steps: int):
    """A seeded Trainer on a tiny full-fine-tuned Llama and the periodic data, with ``callback``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainingArguments

    from dropbp.core.seeding import seeded

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    with seeded(0):
        model = AutoModelForCausalLM.from_config(config)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
                             learning_rate=3e-3, logging_steps=steps, report_to=[], save_strategy="no", use_cpu=True,
                             seed=0, disable_tqdm=True, lr_scheduler_type="constant", warmup_steps=0)
    return Trainer(model=model, args=args, train_dataset=periodic_data(128), callbacks=[callback])


def test_callback_follows_a_drop_rate_schedule_from_exact_steps_to_its_rate(tmp_path):
    from dropbp.core import RateSchedule

    # 6 exact steps, then 0.5 on every branch: half the steps at 0.5, so a quarter is asked over the run
    callback = DropBPCallback(drop_rate=0.5, seed=1, schedule=RateSchedule("constant", total_steps=12, warmup_steps=6))
    _trainer(tmp_path, callback, 12).train()
    report = callback.dropbp.report()
    assert report["steps"] == 12 and report["scheduled_drop_fraction"] == pytest.approx(0.25)
    assert report["realized_drop_fraction"] > 0


def test_callback_allocates_by_sensitivity_on_the_batch_the_trainer_feeds(tmp_path, monkeypatch):
    from dropbp.core import rate_allocation

    seen = []
    measure = rate_allocation.compute_sensitivity

    def recording(method, model, dropbp, batch, **kwargs):
        seen.append(sorted(batch))
        return measure(method, model, dropbp, batch, **kwargs)

    monkeypatch.setattr(rate_allocation, "compute_sensitivity", recording)
    callback = DropBPCallback(drop_rate=0.5, seed=1, allocation="sensitivity", allocate_at=0.25)
    _trainer(tmp_path, callback, 8).train()
    events = callback.technique.allocation.events
    assert [event["step"] for event in events] == [2] and len(seen) == 1 and {"input_ids", "labels"} <= set(seen[0])
    rates = callback.dropbp.rates
    assert len(set(rates)) > 1 and callback.dropbp.asked_drop_fraction == pytest.approx(0.5, abs=0.05)


def test_callback_refuses_an_unknown_allocation():
    from dropbp.core.errors import ConfigError

    with pytest.raises(ConfigError, match="allocation must be one of uniform, sensitivity, depth, online"):
        DropBPCallback(drop_rate=0.5, allocation="by-hand")
