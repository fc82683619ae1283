"""Cluster profiles (``recipes/clusters/*.yaml``): the hardware a recipe runs on, apart from the workload."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dropbp.backends import PRIORITY
from dropbp.core.errors import ConfigError
from dropbp.recipes.config.loader import Problems, build, read_yaml
from dropbp.recipes.config.schema import CLUSTERS, PRECISIONS
from dropbp.recipes.config.fields import check_declared, check_number, setting

BACKENDS = ("nccl", "hccl", "gloo")


@dataclass
class ClusterProfile:
    """One kind of machine: device type, how many per node and their memory, what they compute in, how ranks talk."""

    name: str = setting("", "the profile's name")
    description: str = setting("", "what the machine is")
    device: str = setting("cuda", "device type", choices=tuple(PRIORITY))
    devices_per_node: int = setting(1, "accelerators (ranks) per node")
    memory_gb: float = setting(80.0, "memory per device, GB")
    precisions: tuple[str, ...] = setting(("fp32",), "recipe precisions the device runs", choices=PRECISIONS[1:])
    distributed_backend: str = setting("nccl", "torch.distributed backend", choices=BACKENDS)
    hpu_mode: str | None = setting(None, "lazy or eager (Gaudi only)", choices=("lazy", "eager"))
    compiles_per_mask: bool = setting(False, "every distinct drop mask is a separately compiled graph (lazy Gaudi)")
    qlora: bool = setting(True, "bitsandbytes 4-bit kernels exist on this device")

    def check(self, p: Problems) -> None:
        """Record every problem of the profile."""
        check_declared(self, p, lambda name: name)
        if not isinstance(self.devices_per_node, int) or self.devices_per_node < 1:
            p.add(f"devices_per_node must be an integer >= 1, got {self.devices_per_node!r}.")
        p.check(check_number, "memory_gb", self.memory_gb, low=0, low_open=True)


def cluster_names() -> list[str]:
    """Names of the shipped cluster profiles."""
    return sorted(path.stem for path in CLUSTERS.glob("*.yaml"))


def load_cluster(name: str) -> ClusterProfile:
    """A shipped profile by name, or a profile file."""
    path = Path(name) if Path(name).is_file() else CLUSTERS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"cluster must be one of {', '.join(cluster_names())} or a profile file, got {name!r}.")
    problems = Problems(str(path))
    profile = build(ClusterProfile, read_yaml(path), problems)
    profile.check(problems)
    problems.raise_if_any()
    return profile
