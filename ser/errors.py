"""The base class of the errors `ser` raises for problems a user can fix.

Stage scripts and the `ser` command print such an error's message and exit
non-zero without a traceback (`ser.stageutil.run_stage`); any other exception
is a bug and keeps its traceback. Each error keeps its built-in base as well
(`ParamsError` is still a `ValueError`), so existing `except` clauses still
catch it.
"""
from __future__ import annotations

__all__ = ["SerError", "UnknownName", "CheckpointError"]


class SerError(Exception):
    """An expected error: bad params, missing or inconsistent data, an unusable path."""


class CheckpointError(ValueError, SerError):
    """A model folder (torch checkpoint or linear model) is missing, incomplete, or does not match the
    model it describes."""


class UnknownName(KeyError, SerError):
    """A name (a model, an encoder preset) that is not defined where it is looked up."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0]) if self.args else ""
