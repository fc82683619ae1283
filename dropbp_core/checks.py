"""The value checks every layer shares: integers (``bool`` refused) within bounds, and seeds. Each error names the
field as the caller spells it (``pool_size``, ``--pool-size``, ``dropbp.pool_size``) and says what is allowed."""
from __future__ import annotations

from typing import Any

from .errors import ConfigError

#: Seeds are integers in [0, SEED_LIMIT): every generator they reach (torch's, the data order's) accepts them.
SEED_LIMIT = 2**32


def check_int(name: str, value: Any, low: int | None = 0, high: int | None = None, meaning: str = "") -> int:
    """``value`` if it is an integer (not a ``bool``) in ``low..high`` (either end may be None); a
    :class:`ConfigError` naming ``name`` otherwise (``meaning``, in brackets, says what the number is)."""
    ok = not isinstance(value, bool) and isinstance(value, int)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            allowed = f"an integer in {low}..{high}"
        elif low is not None:
            allowed = f"an integer >= {low}"
        else:
            allowed = "an integer" if high is None else f"an integer <= {high}"
        raise ConfigError(f"{name} must be {allowed}{f' ({meaning})' if meaning else ''}, got {value!r}.")
    return value


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer in [0, 2**32); returned unchanged."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ConfigError(f"{name} must be an integer in [0, 2**32), got {value!r}.")
    return value
