"""What a saved state of the engine, LayerDrop/PLD or the allocation schedule must hold before it is loaded."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import ConfigError


def check_state(owner: str, state: Any, keys: Iterable[str], *, names: Sequence[str] | None = None,
                saved_names: str = "branches") -> None:
    """Refuse, before anything changes, a ``state`` that is not a mapping holding every key in ``keys``, or one saved
    for other branches or blocks than ``names`` (in ``state[saved_names]``)."""
    if not isinstance(state, Mapping):
        raise ConfigError(f"{owner} state must be a mapping (from {owner}.state_dict()), got {type(state).__name__}.")
    missing = [key for key in keys if key not in state]
    if missing:
        raise ConfigError(f"{owner} state lacks {', '.join(missing)}; it was not saved by {owner}.state_dict().")
    if names is not None and list(state[saved_names]) != list(names):
        raise ConfigError(f"{owner} state was saved for {len(state[saved_names])} {saved_names} "
                          f"({', '.join(map(str, state[saved_names][:2]))}, ...), but this one has {len(names)} "
                          f"({', '.join(names[:2])}, ...): it belongs to another model or another setting.")
