"""One contract, every backend: each backend available on this machine (and the HPU adapter against its recording
stand-in) must answer the same questions the same way."""
from __future__ import annotations

import contextlib

import pytest
import torch

from dropbp import backends
from dropbp.backends.base import Backend
from dropbp.core.errors import BackendUnavailableError, ConfigError

AVAILABLE = [name for name, reason in backends.availability().items() if reason is None]
PARAMS = AVAILABLE + (["hpu-standin"] if "hpu" not in AVAILABLE else [])


@pytest.fixture(params=PARAMS)
def backend(request) -> Backend:
    if request.param == "hpu-standin":
        request.getfixturevalue("habana_standin")
        return backends.HPUBackend(lazy_mode=True)
    return backends.get(request.param)


def test_identity_and_device(backend):
    assert backend.is_available() and backend.unavailable_reason() is None
    assert isinstance(backend.device, torch.device) and backend.device.type == backend.name
    assert isinstance(backend.device_name(), str) and backend.device_name()
    assert backend.default_sampler in ("bernoulli", "pool")
    facts = backend.describe()
    assert facts["backend"] == backend.name and "device_name" in facts


def test_autocast_contexts(backend):
    for dtype in (None, torch.float32, torch.bfloat16):
        context = backend.autocast(dtype)
        assert isinstance(context, contextlib.AbstractContextManager)
    if backend.name == "cpu":  # a real op under bf16 autocast where the device can run it
        with backend.autocast(torch.bfloat16):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_step_boundaries_sync_memory_and_compile_counter(backend):
    backend.after_backward()
    backend.after_optimizer_step()
    backend.synchronize()
    backend.reset_peak_memory()
    peak = backend.peak_memory_bytes()
    assert peak is None or (isinstance(peak, int) and peak >= 0)
    capacity = backend.memory_capacity_bytes()
    assert capacity is None or capacity > 0
    count = backend.compile_count()
    assert count is None or (isinstance(count, int) and count >= 0)
    backend.empty_cache()


def test_seeding_is_reproducible(backend):
    backend.seed(123)
    first = torch.rand(4)
    backend.seed(123)
    assert torch.equal(first, torch.rand(4))


def test_out_of_memory_is_recognised(backend):
    assert backend.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not backend.is_out_of_memory(ValueError("shape mismatch"))


def test_auto_priority_table():
    assert list(backends.PRIORITY) == ["hpu", "cuda", "cpu"]
    assert backends.resolve("auto").name == AVAILABLE[0]


@pytest.mark.parametrize("device,pattern", [
    ("hpu", r"habana_frameworks.*not on PyPI"),
    ("tpu", r"device must be one of auto, hpu, cuda, cpu"),
])
def test_unknown_or_unavailable_device_is_a_clear_error(device, pattern):
    if device in AVAILABLE:
        pytest.skip(f"{device} is available here")
    with pytest.raises((ConfigError, BackendUnavailableError), match=pattern):
        backends.get(device)
