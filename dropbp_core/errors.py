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
