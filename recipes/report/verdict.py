"""The one line ``dropbp train`` ends with: what the technique dropped, and the training FLOPs that saved."""
from __future__ import annotations

from typing import Any

from dropbp.core.engine import DropBP
from dropbp.core.step_flops import StepFlops
from dropbp.core.techniques import Applied


def technique_verdict(technique: Applied, flops: StepFlops) -> str:
    """What ``technique`` dropped so far and about how much of the training FLOPs that saves (FLOPs model: a
    backward costs two forwards in full fine-tuning, one with adapters); wall time is what ``dropbp bench``
    measures."""
    frozen, policy = technique.frozen, technique.policy
    what: dict[str, Any] = {"trained_from": len(frozen.frozen_blocks) if frozen is not None else 0}
    if isinstance(policy, DropBP):
        realized = dict(zip((b.name for b in policy.branches), policy.realized_rates()))
        what["no_backward"] = [realized.get(name, 0.0) for name in flops.names]
        report = policy.report()
        done = (f"realised drop fraction {report['realized_drop_fraction']:.2f} of the branches' backward FLOPs "
                f"(scheduled {report['scheduled_drop_fraction']:.2f})")
    elif policy is not None:
        rate = policy.realized_drop_fraction()
        what["skipped_blocks"] = [rate] * len(set(flops.position))
        done = f"{rate:.2f} of the blocks skipped"
    else:
        done = f"{what['trained_from']} bottom blocks frozen"
    return (f"{technique.technique}: {done}; about {flops.saved_fraction(**what):.0%} of the training FLOPs saved "
            "(FLOPs model; dropbp bench throughput measures wall time)")
