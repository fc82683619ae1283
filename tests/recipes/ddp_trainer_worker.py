"""Worker of the data-parallel case in tests/recipes/test_trainer.py: one rank of transformers.Trainer with DropBP
under torchrun (gloo, CPU). Writes its masks, no-path count, adapter sums and losses to OUT/rank<N>.json."""
import json
import os
import sys

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainerCallback, TrainingArguments

from dropbp.core import DropBP
from dropbp.core.seeding import seeded
from dropbp.recipes.training.hf_trainer import DropBPCallback

out = sys.argv[1]
rank = int(os.environ.get("RANK", 0))
config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=True)
with seeded(0):
    model = get_peft_model(AutoModelForCausalLM.from_config(config),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
dropbp = DropBP(model, 0.75, seed=3)
masks = []


class LogMasks(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        masks.append([int(m) for m in dropbp.mask])


ids = torch.randint(3, 64, (64, 4), generator=torch.Generator().manual_seed(0)).repeat(1, 8)
data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
args = TrainingArguments(output_dir=out, max_steps=10, per_device_train_batch_size=4, learning_rate=1e-2,
                         report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1)
trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[DropBPCallback(dropbp), LogMasks()])
trainer.train()
with open(f"{out}/rank{rank}.json", "w") as handle:
    json.dump({"masks": masks, "report": dropbp.report()["no_trainable_path_steps"],
               "weights": {n: p.detach().sum().item() for n, p in model.named_parameters() if p.requires_grad},
               "world": int(os.environ.get("WORLD_SIZE", 1)),
               "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}, handle)
