"""One error hierarchy for duckdb-ft.

Every error the package raises on purpose derives from :class:`FtError`. Messages say what failed, on which
object, and what to do next; they are turned into SQL errors only at the edge (the UDFs in ``extension.py``).
"""

from __future__ import annotations


class FtError(Exception):
    """Base class of every error raised by duckdb-ft."""


class InvalidArgument(FtError):
    """An argument of a call is malformed or out of range (bad JSON, unknown option, wrong type...)."""


class NotFound(FtError):
    """A named object (model, job, role) does not exist."""


class ModelNotFound(NotFound):
    """A model name resolves to neither a fine-tuned model, a built-in alias, a local folder nor a hub id."""


class ModelLoadError(FtError):
    """A model exists but could not be loaded or converted (disk full, unwritable cache, corrupt file)."""


class AlreadyExists(FtError):
    """An object of that name exists already."""


class PermissionDenied(FtError):
    """The current role lacks a privilege; the message names the privilege and the object."""


class Interrupted(FtError):
    """A blocking call was interrupted (``Connection.interrupt()``, Ctrl-C in the shell)."""


class JobError(FtError):
    """A fine-tuning job cannot do what was asked in its current state."""
