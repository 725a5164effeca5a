"""Exceptions raised by :mod:`agatston`."""

from __future__ import annotations

__all__ = ["InvalidInputError"]


class InvalidInputError(ValueError):
    """An argument does not meet the documented contract.

    Subclasses :class:`ValueError`, so ``except ValueError`` keeps working.
    The message always says what was wrong and what was expected.
    """
