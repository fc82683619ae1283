"""Worker of tests/core/test_fsdp.py: one rank of a tiny Llama wrapped with DropBP, then sharded with FSDP2
(``torch.distributed.fsdp.fully_shard``) over gloo on the CPU; writes its masks, losses and final weights."""
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, LlamaConfig

from dropbp.core import DropBP
from dropbp.core.seeding import seeded

STEPS, VOCAB = 4, 64


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(step * 10 + rank))


def model_and_engine():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    with seeded(0):
        model = AutoModelForCausalLM.from_config(config)
    return model, DropBP(model, 0.5, seed=1)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, dropbp = model_and_engine()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    # SGD is linear in the gradient; AdamW turns round-off in near-zero gradients into lr-sized steps
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks, losses = [], []
    for step in range(STEPS):
        dropbp.begin_step(step)
        loss = model(input_ids=batch(step, rank), labels=batch(step, rank)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        masks.append([int(m) for m in dropbp.mask])
        losses.append(loss.item())
    weights = {name: param.full_tensor().tolist() for name, param in model.named_parameters()
               if name.endswith(("q_proj.weight", "down_proj.weight", "embed_tokens.weight"))}
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as handle:
        json.dump({"masks": masks, "losses": losses, "weights": weights}, handle)
    dist.destroy_process_group()
