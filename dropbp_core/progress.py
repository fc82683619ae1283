"""Progress bars: shown on a terminal, silent when output goes to a log or a pipe, off when asked."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar that disappears when done; ``disable=None`` lets tqdm hide it when stderr is not a terminal."""
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
