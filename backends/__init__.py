"""Device backends behind one interface, and the priority table that ``--device auto`` walks (hpu > cuda > cpu)."""
from __future__ import annotations

from dropbp.core.errors import BackendUnavailableError, ConfigError

from .base import PRECISIONS, Backend
from .cpu import CPUBackend
from .cuda import CUDABackend
from .hpu import HPUBackend

#: Backends by name, in the order ``auto`` tries them.
PRIORITY: dict[str, type[Backend]] = {"hpu": HPUBackend, "cuda": CUDABackend, "cpu": CPUBackend}
DEVICE_CHOICES: tuple[str, ...] = ("auto", *PRIORITY)


def resolve(device: str) -> type[Backend]:
    """The backend class for ``device`` ('auto' picks the first available in :data:`PRIORITY`)."""
    if device == "auto":
        return next(cls for cls in PRIORITY.values() if cls.is_available())
    if device not in PRIORITY:
        raise ConfigError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}.")
    cls = PRIORITY[device]
    reason = cls.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)
    return cls


def get(device: str = "auto", **options: object) -> Backend:
    """An instance of the backend for ``device`` ('auto', 'cpu', 'cuda' or 'hpu'); a clear error if unavailable."""
    return resolve(device)(**options)


def availability() -> dict[str, str | None]:
    """Each backend's name mapped to None (available) or the reason it is not."""
    return {name: cls.unavailable_reason() for name, cls in PRIORITY.items()}


__all__ = ["Backend", "PRECISIONS", "CPUBackend", "CUDABackend", "HPUBackend", "PRIORITY", "DEVICE_CHOICES", "get", "resolve",
           "availability"]
