"""Stand-ins for SDKs that cannot be installed here (they are not real implementations)."""
