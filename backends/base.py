"""The one small interface every device backend implements (availability, device, autocast, step boundaries,
memory stats, synchronisation, seeding, compile counting).

Step boundaries have one owner: the driver of the training loop (the recipe loop, an accelerate loop, a Trainer
callback, or your own loop). It calls :meth:`Backend.backward` and :meth:`Backend.optimizer_step`, which run the
backward (through the engine, so a step with nothing to train is skipped and counted) and the optimizer step, each
followed by the device's boundary. The engine (:class:`dropbp.core.DropBP`) knows no devices.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from dropbp.core.dynamo_settings import guard_module_hooks, raise_recompile_limit
from dropbp.core.policy import StepPolicy
from dropbp.core.errors import ConfigError


#: Every precision name: (weight dtype, autocast dtype or None). ``auto`` means :attr:`Backend.default_precision`.
PRECISIONS: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "fp32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "mixed-bf16": (torch.float32, torch.bfloat16),
    "mixed-fp16": (torch.float32, torch.float16),
}


class Backend(ABC):
    """A device adapter. Device quirks live only in subclasses; drivers (recipes, benchmarks, your own loop) call
    these methods and nothing device-specific."""

    name: ClassVar[str]
    #: True where every distinct drop mask becomes a separately compiled graph (lazy-mode Gaudi).
    compiles_per_mask: ClassVar[bool] = False
    #: The sampler a recipe should use on this device by default.
    default_sampler: ClassVar[str] = "bernoulli"
    #: The dynamo backend :meth:`compile` uses by default.
    compile_backend: ClassVar[str] = "inductor"
    #: False for the host CPU; True for devices with their own memory (peak-memory counter, out-of-memory errors).
    accelerator: ClassVar[bool] = True
    #: The precision ``auto`` means on this device (a key of :data:`PRECISIONS`): fp32 weights with bf16 autocast.
    default_precision: ClassVar[str] = "mixed-bf16"
    #: The ``torch.distributed`` backend ranks on this device talk through.
    distributed_backend: ClassVar[str] = "gloo"

    @classmethod
    @abstractmethod
    def unavailable_reason(cls) -> str | None:
        """None when the device can be used here; otherwise one paragraph saying what is missing and how to get it."""

    @classmethod
    def resolve_precision(cls, name: str) -> str:
        """``auto`` -> this device's :attr:`default_precision`; any other name unchanged. The one place ``auto``
        precision is decided, for recipes, ports and benchmarks alike."""
        return cls.default_precision if name == "auto" else name

    @classmethod
    def precision_dtypes(cls, name: str) -> tuple[torch.dtype, torch.dtype | None]:
        """(weight dtype, autocast dtype or None) of precision ``name`` on this device."""
        resolved = cls.resolve_precision(name)
        if resolved not in PRECISIONS:
            raise ConfigError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {name!r}.")
        return PRECISIONS[resolved]

    @classmethod
    def is_available(cls) -> bool:
        """True when this backend can run on this machine."""
        return cls.unavailable_reason() is None

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """The torch device tensors and models should live on."""

    @abstractmethod
    def device_name(self) -> str:
        """A human-readable name of the device (e.g. the GPU model)."""

    def autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context for ``dtype`` (bf16/fp16), or a no-op for None / float32."""
        if dtype is None or dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def after_backward(self) -> None:
        """Step boundary after ``loss.backward()`` (a graph cut on lazy devices; nothing on eager ones)."""

    def after_optimizer_step(self) -> None:
        """Step boundary after ``optimizer.step()``."""

    def backward(self, loss: torch.Tensor, dropbp: StepPolicy | None = None, **kwargs: Any) -> bool:
        """The driver's backward: ``dropbp.backward(loss)`` (skipped and counted when the step left nothing to
        train) or, without DropBP, ``loss.backward()``; then the device's step boundary. Returns whether a backward
        ran."""
        if dropbp is not None:
            ran = dropbp.backward(loss, **kwargs)
        else:
            loss.backward(**kwargs)
            ran = True
        self.after_backward()
        return ran

    def optimizer_step(self, optimizer: torch.optim.Optimizer, *, zero_grad: bool = True) -> None:
        """``optimizer.step()``, the device's step boundary, then ``optimizer.zero_grad(set_to_none=True)``."""
        optimizer.step()
        self.after_optimizer_step()
        if zero_grad:
            optimizer.zero_grad(set_to_none=True)

    def synchronize(self) -> None:
        """Wait for queued device work, so that wall-clock timings are honest."""

    def reset_peak_memory(self) -> None:
        """Reset the peak-memory counter, where the device has one."""

    def peak_memory_bytes(self) -> int | None:
        """Peak allocated device memory since the last reset, or None where the device does not report it."""
        return None

    def memory_capacity_bytes(self) -> int | None:
        """Total device memory, or None where it is not meaningful (the CPU)."""
        return None

    def is_out_of_memory(self, error: BaseException) -> bool:
        """True when ``error`` is this device running out of memory (so a search can back off instead of crashing)."""
        return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()

    def empty_cache(self) -> None:
        """Give cached, unused device memory back after an out-of-memory error, where the device caches it."""

    def seed(self, seed: int) -> None:
        """Seed the default generator of this device (for model init and dropout, not for drop decisions)."""
        torch.manual_seed(seed)

    def rng_state(self) -> dict[str, Any]:
        """The state of every random generator a training step may draw from (dropout, sampling): the CPU's, and
        the device's own where it has one. A checkpoint saves it; :meth:`set_rng_state` puts it back."""
        return {"cpu": torch.get_rng_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rng_state` saved (on the same kind of device)."""
        torch.set_rng_state(state["cpu"])

    def compile(self, model: torch.nn.Module, *, backend: str | None = None,
                recompile_limit: int | None = None) -> torch.nn.Module:
        """``torch.compile`` the model (inductor unless ``backend`` names another dynamo backend).

        Each distinct drop mask is a distinct set of guards, so ``recompile_limit`` should exceed the number of
        masks a run will see (the pool size for ``pool``); past the limit dynamo silently falls back to eager.
        """
        name = self.check_compile_backend(backend or self.compile_backend)
        if recompile_limit is not None:
            raise_recompile_limit(recompile_limit)
        guard_module_hooks()
        return torch.compile(model, backend=name)

    def compile_backends(self) -> list[str]:
        """The dynamo backends registered in this process, debug ones included (a device SDK may add its own,
        e.g. ``hpu_backend``)."""
        import torch._dynamo

        return sorted(torch._dynamo.list_backends(exclude_tags=()))

    def check_compile_backend(self, name: str) -> str:
        """``name`` if dynamo knows it here; otherwise a :class:`ConfigError` listing the usual choices."""
        import torch._dynamo

        if name not in self.compile_backends():
            usual = sorted({*torch._dynamo.list_backends(), "aot_eager", "eager", self.compile_backend})
            raise ConfigError(f"--compile-backend must be a torch.compile backend registered here (e.g. "
                              f"{', '.join(usual)}), got {name!r}.")
        return name

    def compile_count(self) -> int | None:
        """Graphs compiled so far by ``torch.compile`` in this process (dynamo's unique-graph counter)."""
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    def bind_local_rank(self, local_rank: int) -> None:
        """Make this process use its own device among several on a node (called once, right after the backend is
        created, before any tensor is placed)."""

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about the device."""
        return {"backend": self.name, "device": str(self.device), "device_name": self.device_name(),
                "memory_capacity_bytes": self.memory_capacity_bytes()}
