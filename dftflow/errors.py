"""Exceptions that the CLI turns into one-line messages.

Every error a user can cause derives from :class:`DftflowError`; its message
names the file, key and value involved so that it can be fixed without a
traceback.
"""

from __future__ import annotations


class DftflowError(Exception):
    """Base class of the errors that the CLI reports without a traceback."""


class ConfigError(DftflowError):
    """A YAML recipe, profile or input set is missing, malformed or invalid."""


class InputError(DftflowError):
    """A structure source or other user-supplied input cannot be used."""


class ProjectBusyError(DftflowError):
    """Another dftflow process holds the project's lock."""


class DensityError(DftflowError):
    """A charge-density file (CHGCAR, CHG, AECCAR) is unreadable, inconsistent or cut short."""


class CheckpointError(InputError):
    """A model checkpoint is missing, damaged, not a dftflow checkpoint, or from an incompatible dftflow."""
