"""DropBP under FSDP2 (``fully_shard``), two ranks, gloo, CPU: identical masks on both ranks, and training equal to
one process over both ranks' batches (FSDP averages the gradients; equal token counts per rank)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .fsdp_worker import STEPS, batch, model_and_engine
from ..numerics import assert_close_to_scale


@pytest.mark.slow
def test_fsdp2_two_ranks_equal_one_process(tmp_path):
    worker = Path(__file__).with_name("fsdp_worker.py")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29563", str(worker), str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["masks"] == ranks[1]["masks"]
    model, dropbp = model_and_engine()
    # SGD is linear in the gradient; AdamW turns round-off in near-zero gradients into lr-sized steps
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        dropbp.begin_step(step)
        ids = torch.cat([batch(step, 0), batch(step, 1)])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert [int(m) for m in dropbp.mask] == ranks[0]["masks"][step]
        assert abs(loss.item() - (ranks[0]["losses"][step] + ranks[1]["losses"][step]) / 2) < 1e-5
    params = dict(model.named_parameters())
    for name, value in ranks[0]["weights"].items():
        assert_close_to_scale(params[name].detach(), torch.tensor(value), msg=name)  # sharded vs one process
