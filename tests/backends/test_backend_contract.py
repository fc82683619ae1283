"""One contract, every backend: each backend available on this machine (and the HPU adapter against its recording
stand-in) must answer the same questions the same way. Where the stand-in cannot run device work (autocast, peak
memory), the test checks what dropbp hands the SDK and says so."""
from __future__ import annotations

import pytest
import torch

from dropbp import backends
from dropbp.backends.base import Backend
from dropbp.core import DropBP
from dropbp.core.errors import BackendUnavailableError, ConfigError

from ..conftest import tiny_model, token_batch

AVAILABLE = [name for name, reason in backends.availability().items() if reason is None]
PARAMS = AVAILABLE + (["hpu-standin"] if "hpu" not in AVAILABLE else [])


@pytest.fixture(params=PARAMS)
def backend(request) -> Backend:
    if request.param == "hpu-standin":
        request.getfixturevalue("habana_standin")
        backend = backends.HPUBackend(lazy_mode=True)
        backend.standin = True
        return backend
    return backends.get(request.param)


def is_standin(backend: Backend) -> bool:
    return getattr(backend, "standin", False)


def model_device(backend: Backend) -> torch.device:
    """Where test tensors live: the backend's device, or the CPU for the stand-in (it has no device)."""
    return torch.device("cpu") if is_standin(backend) else backend.device


def test_identity_and_device(backend):
    assert backend.is_available() and backend.unavailable_reason() is None
    assert isinstance(backend.device, torch.device) and backend.device.type == backend.name
    assert isinstance(backend.device_name(), str) and backend.device_name()
    assert backend.default_sampler in ("bernoulli", "pool")
    assert backend.accelerator == (backend.name != "cpu")
    weights, autocast = backend.precision_dtypes("auto")  # fp32 on the CPU; fp32 weights, bf16 compute elsewhere
    assert weights == torch.float32 and autocast == (torch.bfloat16 if backend.accelerator else None)
    facts = backend.describe()
    assert facts["backend"] == backend.name and "device_name" in facts


def test_autocast_computes_in_the_asked_dtype(backend):
    for dtype in (None, torch.float32):  # no autocast: float32 stays float32
        with backend.autocast(dtype):
            assert (torch.ones(2, 2, device=model_device(backend)) @ torch.ones(2, 2, device=model_device(backend))
                    ).dtype == torch.float32
    context = backend.autocast(torch.bfloat16)
    if is_standin(backend):  # no HPU kernels here: check what autocast is asked for
        assert isinstance(context, torch.autocast) and context.device == "hpu" and context.fast_dtype == torch.bfloat16
        return
    with context:
        out = torch.ones(2, 2, device=backend.device) @ torch.ones(2, 2, device=backend.device)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["full", "lora"])
def test_driver_runs_backward_and_optimizer_step_each_followed_by_its_boundary(backend, method, monkeypatch):
    events: list[str] = []
    for name in ("after_backward", "after_optimizer_step"):
        original = getattr(backend, name)
        monkeypatch.setattr(backend, name, lambda original=original, name=name: events.append(name) or original())
    model = tiny_model("llama", method).to(model_device(backend))
    dropbp = DropBP(model, 0.5)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for param in trainable:
        param.register_hook(lambda grad: events.append("grad") or grad)
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    optimizer.register_step_post_hook(lambda *args: events.append("optimizer.step"))
    dropbp.begin_step(0, mask="none")
    ran = backend.backward(model(input_ids=token_batch().to(model_device(backend)),
                                 labels=token_batch().to(model_device(backend))).loss, dropbp)
    backend.optimizer_step(optimizer)
    first = events.index("after_backward")
    assert ran and set(events[:first]) == {"grad"}
    assert events[first:] == ["after_backward", "optimizer.step", "after_optimizer_step"]
    assert all(p.grad is None for p in trainable)  # zero_grad(set_to_none=True) after the step


def test_peak_memory_counts_an_allocation(backend):
    backend.synchronize()
    backend.reset_peak_memory()
    size = 4 * 2**20
    block = torch.empty(size, dtype=torch.uint8, device=model_device(backend))
    backend.synchronize()
    peak = backend.peak_memory_bytes()
    del block
    if not backend.accelerator:
        assert peak is None  # the host has no peak counter; benchmarks count saved activations instead
    elif is_standin(backend):  # no device allocator here: the value is what the SDK's counter reports
        assert peak == torch.hpu.max_memory_allocated()
    else:
        assert peak >= size
    capacity = backend.memory_capacity_bytes()
    assert capacity is None or capacity > size
    backend.empty_cache()


def test_compile_count_counts_a_new_graph(backend):
    before = backend.compile_count()
    if is_standin(backend):  # lazy mode: the ops between two mark_steps are one graph
        torch.ones(3, dtype=torch.float32).mul(2.5).add(1.0)
        backend.mark_step()
    else:
        torch.compile(lambda x: x * 2.5 + 1.0, backend="eager")(torch.ones(3, device=backend.device))
    assert backend.compile_count() == before + 1


def test_seeding_seeds_the_devices_own_generator(backend):
    backend.seed(123)
    device_module = torch if backend.device.type == "cpu" else getattr(torch, backend.device.type)
    assert device_module.initial_seed() == 123 and torch.initial_seed() == 123
    if is_standin(backend):
        return  # no device generator to draw from; the SDK was asked to seed it (above)
    first = torch.rand(4, device=backend.device)
    backend.seed(123)
    assert torch.equal(first, torch.rand(4, device=backend.device))


def test_rng_state_covers_the_cpu_and_the_device_generator(backend):
    state = backend.rng_state()
    device = model_device(backend)
    before = (torch.rand(4), torch.rand(4, device=device))
    backend.set_rng_state(state)
    assert torch.equal(before[0], torch.rand(4)) and torch.equal(before[1], torch.rand(4, device=device))
    if backend.accelerator:  # the device's own generator is part of the state
        assert backend.name in state
    if is_standin(backend):  # no Gaudi generator here: the SDK's random module was asked for it and given it back
        from habana_frameworks import _standin_log

        assert {"hpu.get_rng_state", "hpu.set_rng_state"} <= set(_standin_log.EVENTS)
        assert torch.equal(state["hpu"], torch.arange(8, dtype=torch.uint8))


def test_out_of_memory_is_recognised(backend):
    assert backend.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not backend.is_out_of_memory(ValueError("shape mismatch"))


@pytest.mark.parametrize("available,picked", [({"hpu", "cuda", "cpu"}, "hpu"), ({"cuda", "cpu"}, "cuda"),
                                              ({"cpu"}, "cpu"), ({"hpu", "cpu"}, "hpu")])
def test_auto_picks_hpu_then_cuda_then_cpu(monkeypatch, available, picked):
    for name, cls in backends.PRIORITY.items():
        reason = None if name in available else f"{name} is not here"
        monkeypatch.setattr(cls, "unavailable_reason", classmethod(lambda c, r=reason: r))
    assert backends.resolve("auto").name == picked
    assert backends.availability() == {n: None if n in available else f"{n} is not here" for n in backends.PRIORITY}


def test_auto_resolves_to_what_runs_here():
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
