"""The bench's exceptions: each is one line for the user (the CLI prints it, no traceback)."""
from __future__ import annotations


class BenchError(Exception):
    """A replay that cannot run as asked (server unreachable, function missing, ...)."""


class TraceError(BenchError):
    """A trace or an option that cannot be replayed (bad CSV, empty slice, zero functions)."""
