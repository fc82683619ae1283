"""A RECORDING STAND-IN for Intel's Gaudi SDK (``habana_frameworks``), written out as a package for tests.

It is not the SDK and runs nothing on a device: it records the calls the HPU backend makes (``mark_step``, the
metrics API, ``ModuleCacher``), the value of ``PT_HPU_LAZY_MODE`` at import time, and registers a ``torch.hpu``
namespace with the memory functions the real SDK adds. In lazy mode it also imitates the SDK's graph cache: every
op (with its argument shapes) between two ``mark_step`` calls is one graph, and ``graph_compilation`` counts the
distinct graphs, so the count follows from what ran, not from a number written into the stand-in. Module and
function names are those the HPU backend uses.
"""
from __future__ import annotations

from pathlib import Path

FILES = {
    "habana_frameworks/__init__.py": '"""Stand-in of the Gaudi SDK for tests (records calls)."""\n',
    "habana_frameworks/_standin_log.py": "EVENTS = []\nENV_AT_IMPORT = []\nMETRICS_ASKED = []\nCACHER = []\nGRAPHS = set()\nPENDING = []\n",
    "habana_frameworks/torch/__init__.py": "",
    "habana_frameworks/torch/core/__init__.py": '''
import os
import types

import torch

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from habana_frameworks._standin_log import ENV_AT_IMPORT, EVENTS, GRAPHS, PENDING

ENV_AT_IMPORT.append(os.environ.get("PT_HPU_LAZY_MODE"))


class _LazyGraphRecorder(TorchDispatchMode):
    """Lazy mode in miniature: every floating-point op (the model's compute; here on the CPU, integer work such as
    drawing masks and batches stands for host-side work) is recorded with its argument shapes until mark_step()
    cuts the graph; reading a value to the host (.item()) cuts it too, as in the SDK. A graph never seen before
    counts as one compilation, as in the SDK's graph cache."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat, _ = tree_flatten((args, kwargs or {}))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        if any(t.is_floating_point() for t in tensors):
            PENDING.append((str(func), tuple(tuple(t.shape) for t in tensors)))
        if func is torch.ops.aten._local_scalar_dense.default:
            _cut()
        return func(*args, **(kwargs or {}))


def _cut():
    if PENDING:
        GRAPHS.add(tuple(PENDING))
        PENDING.clear()


_RECORDER = None
if os.environ.get("PT_HPU_LAZY_MODE", "0") != "0":
    _RECORDER = _LazyGraphRecorder()
    _RECORDER.__enter__()


def _standin_stop():
    """Leave the recording mode (the test fixture calls this on teardown)."""
    global _RECORDER
    if _RECORDER is not None:
        _RECORDER.__exit__(None, None, None)
        _RECORDER = None


def mark_step(device_str="", sync=False):
    EVENTS.append("mark_step")
    _cut()


_seeds = [0]
_stats = {"Limit": 96 * 2**30, "InUse": 0, "MaxInUse": 123456, "NumAllocs": 0, "NumFrees": 0}
torch.hpu = types.SimpleNamespace(
    is_available=lambda: True,
    get_device_name=lambda: "GAUDI2 (stand-in)",
    synchronize=lambda: EVENTS.append("synchronize"),
    reset_peak_memory_stats=lambda: EVENTS.append("reset_peak_memory_stats"),
    max_memory_allocated=lambda: _stats["MaxInUse"],
    memory_allocated=lambda: _stats["InUse"],
    memory_stats=lambda: dict(_stats),
    manual_seed=lambda seed: EVENTS.append(("hpu.manual_seed", seed)) or _seeds.append(seed),
    initial_seed=lambda: _seeds[-1],
)
''',
    "habana_frameworks/torch/hpu/__init__.py": '''
from habana_frameworks._standin_log import CACHER


class ModuleCacher:
    def __init__(self, max_graphs=10):
        self.max_graphs = max_graphs

    def __call__(self, model, inplace=True):
        CACHER.append((model, self.max_graphs, inplace))
        return model
''',
    "habana_frameworks/torch/hpu/random.py": '''
import torch

from habana_frameworks._standin_log import EVENTS

_STATE = [torch.arange(8, dtype=torch.uint8)]


def get_rng_state():
    EVENTS.append("hpu.get_rng_state")
    return _STATE[0].clone()


def set_rng_state(state):
    EVENTS.append("hpu.set_rng_state")
    _STATE[0] = state.clone()
''',
    "habana_frameworks/torch/hpu/metrics.py": '''
from habana_frameworks._standin_log import GRAPHS, METRICS_ASKED


class _Metric:
    def stats(self):
        return [("TotalNumber", len(GRAPHS)), ("TotalTime", 200 * len(GRAPHS)), ("AvgTime", 200.0)]


def metric_global(name):
    METRICS_ASKED.append(name)
    return _Metric() if name == "graph_compilation" else None
''',
    "habana_frameworks/torch/dynamo/__init__.py": '''
import torch._dynamo

from habana_frameworks._standin_log import EVENTS


def _hpu_backend(graph_module, example_inputs):
    EVENTS.append("hpu_backend")
    return graph_module.forward


if "hpu_backend" not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(compiler_fn=_hpu_backend, name="hpu_backend")
''',
    "habana_frameworks/torch/utils/__init__.py": "",
    "habana_frameworks/torch/utils/internal.py": '''
import os


def is_lazy():
    return os.environ.get("PT_HPU_LAZY_MODE", "0") != "0"
''',
}


def write_standin(root: Path) -> Path:
    """Write the stand-in package under ``root`` and return ``root`` (to put on ``sys.path``)."""
    for relative, text in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip("\n"))
    return root
