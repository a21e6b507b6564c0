"""The errors a user can cause. The CLI prints these as one line (exit 2); anything else is a bug
and keeps its traceback.

Each class also derives from the built-in exception it refines (ValueError for a bad argument,
KeyError for an unknown name, RuntimeError for missing data or weights), so library callers can
catch either.
"""

from __future__ import annotations


class BenchError(Exception):
    """Base of every error whose message tells the user what is wrong and how to fix it."""


class UsageError(BenchError, ValueError):
    """A bad argument: an option that does not apply, a value out of range, a malformed spec."""


class NumericalError(BenchError, FloatingPointError):
    """Numbers that are not finite where they must be (features overflowing the cache precision,
    a NaN from a backbone): the message names the precision to change or the input to check."""
