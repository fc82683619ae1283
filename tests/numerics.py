"""Tolerances for tests that compare two computations of one quantity.

Two *different* fp32 computations (another summation order, a subset of rows, a fused against an unfused kernel,
another thread count, a gradient routed through another graph) agree to round-off *of the tensor's scale*, not of
each element: an element that is itself a small difference of large terms carries the round-off of those terms.
Elementwise ``rtol``/``atol`` pairs therefore hold on one machine and fail on another whose kernels sum in another
order. :func:`assert_close_to_scale` bounds the largest elementwise error by a fraction of the expected tensor's
largest magnitude. The *same* computation run twice stays bit-exact: compare it with ``torch.equal``.
"""
from __future__ import annotations

import os

import torch

#: Two different fp32 computations through a tiny model (a few layers): error <= 1e-5 of the tensor's scale.
#: Round-off of fp32 is 6e-8 per operation; a few hundred accumulated terms stay well inside.
TINY = 1e-5
#: Through a deep pre-trained model (30 blocks, sums over 49152 logits): error <= 1e-4 of the tensor's scale.
DEEP = 1e-4

_RECORD = os.environ.get("DROPBP_RECORD_TOLERANCES")  # a file: append each comparison's error/scale, to size them


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest elementwise difference over the largest magnitude of ``expected`` (0 when both are all zero)."""
    actual = torch.as_tensor(actual).detach().double()
    expected = torch.as_tensor(expected).detach().double()
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    error = float((actual - expected).abs().max()) if expected.numel() else 0.0
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    if scale == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return error / scale


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float = TINY, msg: str = "") -> None:
    """Assert that the largest elementwise difference is at most ``rel`` times ``expected``'s largest magnitude."""
    ratio = scaled_error(actual, expected)
    if _RECORD:
        with open(_RECORD, "a", encoding="utf-8") as f:
            f.write(f"{ratio!r} {rel!r} {os.environ.get('PYTEST_CURRENT_TEST', '')} {msg}\n")
    assert ratio <= rel, (f"{msg}: largest difference is {ratio:.3g} of the tensor's largest magnitude "
                          f"(allowed {rel:g})")
