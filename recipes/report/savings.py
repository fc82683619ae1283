"""The one line ``dropbp train`` ends with: what the technique dropped, and the training FLOPs that saved; and the
training FLOPs of a finished run (for benchmarks that read time from FLOPs)."""
from __future__ import annotations

from typing import Any

from dropbp.core.engine import DropBP
from dropbp.core.step_flops import StepFlops
from dropbp.core.techniques import Technique


def realised_savings(technique: Technique, flops: StepFlops) -> dict[str, Any]:
    """What ``technique`` has left out so far, as :meth:`StepFlops.step`'s arguments (see
    :meth:`Technique.step_effect`)."""
    return technique.step_effect(flops.names, realised=True)


def training_flops(technique: Technique | None, flops: StepFlops, tokens: int, steps: int) -> float:
    """Training FLOPs (FLOPs model) of ``steps`` optimizer steps of ``tokens`` tokens each, at what ``technique``
    (None: exact backprop everywhere) realised over them."""
    return flops.step(tokens, **(realised_savings(technique, flops) if technique is not None else {})) * steps


def savings_line(technique: Technique, flops: StepFlops) -> str:
    """What ``technique`` dropped so far and about how much of the training FLOPs that saves (FLOPs model: a
    backward costs two forwards in full fine-tuning, one with adapters); wall time is what ``dropbp bench``
    measures."""
    policy, what = technique.policy, realised_savings(technique, flops)
    if isinstance(policy, DropBP):
        report = policy.report()
        done = (f"realised drop fraction {report['realized_drop_fraction']:.2f} of the branches' backward FLOPs "
                f"(scheduled {report['scheduled_drop_fraction']:.2f})")
    elif policy is not None:
        done = f"{policy.realized_drop_fraction():.2f} of the blocks {getattr(policy, 'left_out', 'left out')}"
    else:
        done = f"{what['trained_from']} bottom blocks frozen"
    return (f"{technique.name}: {done}; about {flops.saved_fraction(**what):.0%} of the training FLOPs saved "
            "(FLOPs model; dropbp bench throughput measures wall time)")
