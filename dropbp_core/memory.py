"""Counting the bytes autograd keeps for backward, on any device, with saved-tensor hooks."""
from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch
from torch import nn


class _Saved:
    """A box around one saved tensor; autograd holds the box, we hold only a weak reference to it. ``label`` is the
    meter's label when the tensor was saved (which module saved it)."""

    __slots__ = ("tensor", "label", "__weakref__")

    def __init__(self, tensor: torch.Tensor, label: object = None) -> None:
        self.tensor, self.label = tensor, label


class SavedActivationMeter:
    """Context manager: bytes of tensors saved for backward inside the block and still alive when it ends.

    Only what survives counts: a pre-norm feeding a dropped branch saves tensors that are freed at once, and a
    storage saved by several ops counts once. Storages of ``exclude`` (e.g. the model's own parameters and
    buffers) are left out, so the count is activations only. Read :attr:`bytes` after the block, while the graph
    (the loss) is still referenced.
    """

    def __init__(self, exclude: nn.Module | None = None) -> None:
        self._excluded: set[tuple[str, int]] = set()
        if exclude is not None:
            for tensor in [*exclude.parameters(), *exclude.buffers()]:
                self._excluded.add(self._key(tensor))
        self._boxes: list[weakref.ref[_Saved]] = []
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None
        self.bytes = 0
        self.tensors = 0
        #: Set while a module runs (see :func:`saved_bytes_by_module`); each saved storage counts under the label
        #: in force when it was first saved, in :attr:`by_label`.
        self.label: object = None
        self.by_label: dict[object, int] = {}

    @staticmethod
    def _key(tensor: torch.Tensor) -> tuple[str, int]:
        try:
            return str(tensor.device), tensor.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # tensors without a storage (e.g. lazy-mode device tensors)
            return str(tensor.device), id(tensor)

    @staticmethod
    def _nbytes(tensor: torch.Tensor) -> int:
        try:
            return tensor.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            return tensor.numel() * tensor.element_size()

    def _pack(self, tensor: torch.Tensor) -> _Saved:
        # The box holds a detached alias (same storage, no grad_fn): holding the tensor itself would close a cycle
        # through C++ (a saved output -> its grad_fn -> the box -> the output) that no collector can free, keeping
        # alive what autograd would have freed at once, e.g. the graph of a pre-norm feeding a dropped branch.
        box = _Saved(tensor.detach(), self.label)
        self._boxes.append(weakref.ref(box))
        return box

    @staticmethod
    def _unpack(box: _Saved) -> torch.Tensor:
        return box.tensor

    def __enter__(self) -> "SavedActivationMeter":
        self._boxes.clear()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(exc_type, exc, tb)
        seen: dict[tuple[str, int], int] = {}
        labels: dict[tuple[str, int], object] = {}
        for ref in self._boxes:
            box = ref()
            if box is None:
                continue
            key = self._key(box.tensor)
            if key not in self._excluded:
                seen[key] = self._nbytes(box.tensor)
                labels.setdefault(key, box.label)
        self.bytes = sum(seen.values())
        self.tensors = len(seen)
        self.by_label = {}
        for key, size in seen.items():
            self.by_label[labels[key]] = self.by_label.get(labels[key], 0) + size
        self._boxes.clear()


def saved_activation_bytes(model: nn.Module, batch: torch.Tensor) -> int:
    """Activation bytes one forward pass of ``model`` on ``batch`` (next-token loss) keeps for backward."""
    with SavedActivationMeter(exclude=model) as meter:
        loss = model(input_ids=batch, labels=batch).loss
    del loss
    return meter.bytes


def saved_bytes_by_module(model: nn.Module, batch: torch.Tensor, modules: list[nn.Module]) -> list[int]:
    """The saved-activation bytes of one forward pass (as :func:`saved_activation_bytes`) that each of ``modules``
    (e.g. the decoder blocks, which do not nest) saved while it ran: with activation checkpointing, what recomputing
    that block holds during its backward."""
    with SavedActivationMeter(exclude=model) as meter:
        handles = []
        for index, module in enumerate(modules):
            handles.append(module.register_forward_pre_hook(lambda *args, index=index: setattr(meter, "label", index)))
            handles.append(module.register_forward_hook(lambda *args: setattr(meter, "label", None),
                                                        always_call=True))
        try:
            loss = model(input_ids=batch, labels=batch).loss
        finally:
            for handle in handles:
                handle.remove()
    del loss
    return [meter.by_label.get(index, 0) for index in range(len(modules))]


_CACHE_ARGUMENTS = ("past_key_values", "past_key_value", "layer_past")
BlockInputs = dict[int, tuple[tuple[Any, ...], dict[str, Any]]]


@contextmanager
def captured_block_inputs(blocks: Sequence[nn.Module]) -> Iterator[BlockInputs]:
    """Inside the block, the positional and keyword arguments each of ``blocks`` is first called with, by index."""
    captured: BlockInputs = {}

    def capture(index: int):
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.setdefault(index, (args, dict(kwargs)))
        return hook

    handles = [block.register_forward_pre_hook(capture(index), with_kwargs=True) for index, block in enumerate(blocks)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def rerun_saved_bytes(model: nn.Module, block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """What ``block`` saves for backward when it runs again on the inputs it had (see
    :func:`captured_block_inputs`), with no key/value cache. With activation checkpointing switched off for the
    rerun, that is what recomputing the block holds during its backward; the caller switches it."""
    kwargs = {**kwargs, **{name: None for name in _CACHE_ARGUMENTS if name in kwargs}}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    with torch.enable_grad(), SavedActivationMeter(exclude=model) as meter:
        out = block(*args, **kwargs)
    del out
    return meter.bytes
