"""The one exception of the embedded stack, in a module of its own so every other module can raise it."""

from __future__ import annotations


class StackError(RuntimeError):
    """A part of the embedded stack could not be started, checked or stopped."""
