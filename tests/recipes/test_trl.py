"""TRL's SFTTrainer with DropBPCallback: it trains through steps that leave nothing trainable, including when the loss
comes from the fused head's ``log_probs`` (a field the engine must tie like any other output)."""
from __future__ import annotations

import pytest
import torch

from dropbp.core import DropBP
from dropbp.recipes.model.build import build_model

trl = pytest.importorskip("trl")  # a dev dependency; also the extra dropbp[trl]
peft = pytest.importorskip("peft")

SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)


def lora_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("tiny", **SHAPE)
    return peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))


def byte_tokenizer():
    """A Hugging Face fast tokenizer over the 256 byte symbols, made offline (SFTTrainer needs one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=alphabet[0], pad_token=alphabet[1])


def test_a_loss_from_the_fused_heads_log_probs_backpropagates_when_nothing_is_trainable():
    from trl.trainer.sft_trainer import add_fused_lm_head

    model = lora_model()
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    dropbp = DropBP(model, drop_rate=0.5, seed=0)
    model.train()
    dropbp.begin_step(0, mask="all")
    assert not dropbp.has_trainable_path()
    ids = torch.randint(0, 200, (2, 8))
    out = model(input_ids=ids, labels=ids, fused_lm_head=True)
    (-out.log_probs).sum().backward()  # raised "does not require grad" when only loss and logits were tied
    assert all(p.grad is None for p in model.parameters())
    assert not out.is_top1.is_floating_point()  # non-float fields are left alone


@pytest.mark.slow
@pytest.mark.parametrize("method,checkpointing", [("lora", False), ("lora", True), ("full", False)])
def test_sft_trainer_trains_with_the_callback_through_no_path_steps(tmp_path, method, checkpointing):
    from trl import SFTConfig, SFTTrainer

    from dropbp.recipes.training.hf_trainer import DropBPCallback

    if method == "lora":
        model = lora_model()
    else:
        torch.manual_seed(0)
        model = build_model("tiny", **SHAPE)
    dropbp = DropBP(model, drop_rate=0.75, seed=0)
    trainer = SFTTrainer(model=model, args=_args(tmp_path, checkpointing), train_dataset=_data(),
                         processing_class=byte_tokenizer(), callbacks=[DropBPCallback(dropbp)])
    trainer.train()
    _check_run(trainer, dropbp, no_path_expected=method == "lora")


def _args(tmp_path, checkpointing=False):
    from trl import SFTConfig

    return SFTConfig(output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=4, learning_rate=1e-2,
                     logging_steps=10, report_to=[], save_strategy="no", use_cpu=True, seed=0,
                     gradient_checkpointing=checkpointing)


def _data():
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": [5, 6, 7, 8, 9, 10, 11, 12 + i % 9]} for i in range(160)])


def _check_run(trainer, dropbp, no_path_expected=True):
    """The loss falls, and the counted no-trainable-path steps equal those the masks predict."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert float(losses[-1]) < float(losses[0])
    all_dropped = sum(all(dropbp.sampler_at(step).mask(step).tolist()) for step in range(40))
    predicted = all_dropped if no_path_expected else 0  # full fine-tuning: embeddings and head always train
    assert all_dropped > 0 and dropbp.report()["no_trainable_path_steps"] == predicted
    assert dropbp.steps_counted == 40


@pytest.mark.slow
def test_the_callback_attaches_to_the_model_sft_trainer_wraps_in_peft_itself(tmp_path):
    from trl import SFTTrainer

    from dropbp.recipes.training.hf_trainer import DropBPCallback

    torch.manual_seed(0)
    callback = DropBPCallback(drop_rate=0.75, seed=0)
    trainer = SFTTrainer(model=build_model("tiny", **SHAPE), args=_args(tmp_path), train_dataset=_data(),
                         processing_class=byte_tokenizer(), callbacks=[callback],
                         peft_config=peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.train()
    assert isinstance(trainer.model, peft.PeftModel) and DropBP.of(trainer.model) is callback.dropbp
    _check_run(trainer, callback.dropbp)


def test_the_callback_takes_an_engine_or_its_settings_not_both():
    from dropbp.core.errors import ConfigError
    from dropbp.recipes.training.hf_trainer import DropBPCallback

    with pytest.raises(ConfigError, match="an engine or the engine's settings"):
        DropBPCallback(DropBP(lora_model(), drop_rate=0.5), drop_rate=0.75)
