"""``dropbp train`` on two ranks through ``accelerate launch`` (gloo, CPU): the ranks draw identical masks with no
communication, and the losses equal a one-process run with the same global batch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import logged_losses

SMALL = ("model.config={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
         "num_key_value_heads: 2}")
# packed windows without prompt masking: every rank's batch has the same number of loss tokens, so the average of
# the ranks' mean losses is the mean loss of the global batch (the quantity one process computes)
COMMON = ["tiny-tasks", SMALL, "data.packing=true", "data.mask_prompt=false", "train.steps=10", "train.eval_every=0",
          "train.exact_match=0", "train.log_masks=true", "dropbp.allocation=uniform", "dropbp.drop_rate=0.5",
          "dropbp.schedule.kind=constant", "--device", "cpu", "--quiet"]


def losses(out: Path) -> list[float]:
    return [float(loss) for _, loss in logged_losses(out)]


@pytest.mark.slow
def test_two_ranks_through_accelerate_launch_equal_one_process(tmp_path):
    bin_dir = Path(sys.executable).parent
    single = tmp_path / "single"
    subprocess.run([str(bin_dir / "dropbp"), "train", *COMMON, "train.micro_batch_size=8", "--output-dir",
                    str(single)], check=True, capture_output=True, timeout=600, cwd=tmp_path)
    ranks = tmp_path / "ranks"
    result = subprocess.run([str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "--main_process_port", "29551", "-m", "dropbp.recipes", "train", *COMMON,
                             "train.micro_batch_size=4", "--output-dir", str(ranks)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 ranks" in result.stdout
    masks = [(ranks / f"masks-rank{r}.csv").read_text() for r in (0, 1)]
    assert masks[0] == masks[1] == (single / "masks-rank0.csv").read_text()
    assert len(masks[0].splitlines()) == 10
    one, two = losses(single), losses(ranks)
    assert len(one) == len(two) == 10
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5
