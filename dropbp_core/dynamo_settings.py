"""Every process-wide ``torch._dynamo`` setting DropBP changes, in one place.

DropBP changes two settings, each only when it matters, each logged once (logger ``dropbp``):

- ``skip_nnmodule_hook_guards = False`` when DropBP's hooks are first attached and whenever a backend compiles a
  model. Dynamo skips guards on module hooks by default (for speed), and then a graph traced before the hooks were
  attached, or after they were removed, is replayed silently with the wrong hooks: wrong gradients, no error.
- the per-function recompile limit (``recompile_limit``, called ``cache_size_limit`` in older torch) is raised,
  never lowered, to what a backend's ``compile(..., recompile_limit=N)`` asks for. Each distinct drop mask is a
  distinct set of guards; past the limit dynamo silently falls back to eager.

Opt out, for users who manage dynamo themselves, with the environment variable ``DROPBP_MANAGE_DYNAMO=0`` or
:func:`set_managed(False) <set_managed>`. Then nothing here touches dynamo; you must set the hook guards yourself
before compiling a model that DropBP wraps. :func:`changes` lists what was changed, for reports.
"""
from __future__ import annotations

import logging
import os
from typing import Any

ENV_OPT_OUT = "DROPBP_MANAGE_DYNAMO"
HOOK_GUARDS = "skip_nnmodule_hook_guards"
RECOMPILE_LIMIT_NAMES = ("recompile_limit", "cache_size_limit")  # new torch, older torch

logger = logging.getLogger("dropbp")
_managed: bool | None = None  # None: decided by the environment variable
_changes: dict[str, tuple[Any, Any]] = {}


def managed() -> bool:
    """Whether DropBP may change dynamo settings (default yes; ``DROPBP_MANAGE_DYNAMO=0`` or ``set_managed(False)``
    says no)."""
    if _managed is not None:
        return _managed
    return os.environ.get(ENV_OPT_OUT, "1").strip().lower() not in ("0", "false", "no", "off")


def set_managed(enabled: bool) -> None:
    """Let DropBP change dynamo settings (True) or leave them entirely to you (False). Overrides the environment."""
    global _managed
    _managed = bool(enabled)


def changes() -> dict[str, tuple[Any, Any]]:
    """Settings changed so far in this process: name -> (value before, value now)."""
    return dict(_changes)


def _set(name: str, value: Any) -> None:
    import torch._dynamo.config as dynamo_config

    before = getattr(dynamo_config, name)
    if before == value:
        return
    setattr(dynamo_config, name, value)
    first = _changes.get(name, (before, None))[0]
    if name not in _changes:
        logger.info("dropbp set torch._dynamo.config.%s = %r (was %r); %s=0 opts out", name, value, before,
                    ENV_OPT_OUT)
    _changes[name] = (first, value)


def guard_module_hooks() -> None:
    """Make ``torch.compile`` guard on module hooks (see the module docstring); a no-op when opted out."""
    import torch._dynamo.config as dynamo_config

    if managed() and hasattr(dynamo_config, HOOK_GUARDS):
        _set(HOOK_GUARDS, False)


def raise_recompile_limit(limit: int) -> None:
    """Raise dynamo's per-function recompile limit to at least ``limit``; a no-op when opted out."""
    import torch._dynamo.config as dynamo_config

    if not managed():
        return
    for name in RECOMPILE_LIMIT_NAMES:
        if hasattr(dynamo_config, name):
            if getattr(dynamo_config, name) < limit:
                _set(name, int(limit))
            return
