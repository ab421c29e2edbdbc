"""The errors a run reports as one clear line (the bottom of the import graph: imports nothing).

Every layer raises these and the command line catches them, so they live here and not in the
module that raises them first: ``trainers/`` and ``datasets/`` can raise them without importing the
config builder or the data pipeline above them.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override is wrong: the message says what and what is valid."""


class DataError(ValueError):
    """The data cannot be prepared as configured; the message says how to fix it."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match the model; the message says which."""


class ClassSpaceError(ValueError):
    """The trainer's learned state is tied to its classes (e.g. class-specific context) and cannot
    be evaluated on another set of classes."""


class TrainingDiverged(RuntimeError):
    """A client's loss became non-finite; the last good checkpoint is kept."""


class OutputError(RuntimeError):
    """The output folder cannot be written (read-only, full, not a folder); the message names the path.
    Files written before are intact (every write is atomic)."""
