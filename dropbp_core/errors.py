"""Error types raised by dropbp for bad input; the CLI turns them into one paragraph and exit code 2."""
from __future__ import annotations


class DropBPError(Exception):
    """Base class of every error dropbp raises on purpose for bad input or a missing dependency."""

    #: The command line's exit code for this error (2: bad input).
    exit_code = 2


class ConfigError(DropBPError, ValueError):
    """A setting has a value outside what is allowed; the message names the field and the allowed values."""


class NoMatchingBranchError(DropBPError, ValueError):
    """Branch discovery matched no module; the message repeats the patterns that were tried."""


class BackendUnavailableError(DropBPError, RuntimeError):
    """The requested device backend cannot run on this machine; the message says what is missing and how to get it."""


class AllocationError(DropBPError, ValueError):
    """Drop-rate allocation cannot meet the FLOPs budget under the given constraints."""


class AlreadyWrappedError(ConfigError):
    """A model (or a module inside it) that an attached DropBP engine already wraps was given to another one."""

    def __init__(self, existing: object) -> None:  # the engine already attached (a DropBP)
        branches = existing.branches  # type: ignore[attr-defined]
        super().__init__(f"this model is already wrapped by {existing!r} (its hooks are on {branches[0].name} and "
                         f"{len(branches) - 1} more branches); one engine per model. Call remove() on that engine "
                         "first (DropBP.of(model).remove()), or keep using it (DropBP.of(model) returns it).")
