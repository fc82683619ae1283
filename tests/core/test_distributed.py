"""Data parallel on the CPU for real: 2 processes, gloo, DDP. Every rank draws the same mask with no communication,
and the all-reduced gradients equal the average of single-process gradients under that mask."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dropbp.core import DropBP

from ..conftest import loss_and_grads, tiny_model, token_batch
from ..numerics import assert_close_to_scale

STEPS = 3
WORLD = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = tiny_model("llama", "full", layers=3)
        dropbp = DropBP(model, 0.5, seed=7)  # hooks on the inner model; DDP wraps it afterwards
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        record = []
        for step in range(STEPS):
            mask = dropbp.begin_step(step)
            batch = token_batch(seed=100 * step + rank)
            ddp.zero_grad(set_to_none=True)
            loss = ddp(input_ids=batch, labels=batch).loss
            dropbp.backward(loss)
            grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
            record.append({"mask": mask, "grads": grads})
        torch.save(record, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_agree_and_match_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    records = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    reference_model = tiny_model("llama", "full", layers=3)
    reference = DropBP(reference_model, 0.5, seed=7)
    dropped_somewhere = False
    for step in range(STEPS):
        masks = [records[r][step]["mask"] for r in range(WORLD)]
        assert masks[0] == masks[1] == tuple(reference.sampler.mask(step).tolist())
        reference.begin_step(step, mask=list(masks[0]))
        single = [loss_and_grads(reference_model, token_batch(seed=100 * step + r))[1] for r in range(WORLD)]
        for name, grad in records[0][step]["grads"].items():
            other = records[1][step]["grads"][name]
            if grad is None:
                assert other is None and single[0][name] is None, name  # dropped on every rank
                dropped_somewhere = True
                continue
            assert torch.equal(grad, other), name  # all-reduced: every rank holds the same bits
            assert_close_to_scale(grad, (single[0][name] + single[1][name]) / 2, msg=name)  # gloo's sum order
    assert dropped_somewhere


def _lora_all_dropped_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = tiny_model("llama", "lora")
        dropbp = DropBP(model, 0.5)
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        ran = []
        for step, mask in enumerate(["none", "all", "none"]):
            dropbp.begin_step(step, mask=mask)
            ddp.zero_grad(set_to_none=True)
            batch = token_batch(seed=rank)
            ran.append(dropbp.backward(ddp(input_ids=batch, labels=batch).loss))
        lora_grad = next(p.grad for n, p in model.named_parameters() if "lora_B" in n)
        torch.save({"ran": ran, "grad": lora_grad}, f"{out_dir}/lora{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_lora_step_with_every_branch_dropped(tmp_path):
    mp.spawn(_lora_all_dropped_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"lora{r}.pt") for r in range(WORLD)]
    assert all(r["ran"] == [True, False, True] for r in results)  # skipped, counted, and DDP carries on
    assert torch.equal(results[0]["grad"], results[1]["grad"])  # all-reduced: the same bits
