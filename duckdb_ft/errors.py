"""One error hierarchy for duckdb-ft.

Every error the package raises on purpose derives from :class:`FtError`, and each class also derives from the
matching DuckDB exception (``PermissionDenied`` is a ``duckdb.PermissionException``, ``NotFound`` a
``duckdb.CatalogException``, ...), so a caller may catch either. Messages say what failed, on which object, and
what to do next.

Inside SQL, duckdb-ft's functions are Python UDFs, and DuckDB reports any exception a UDF raises as
``InvalidInputException("... while executing the UDF: <Class>: <message>")``. :func:`from_duckdb` turns such an
error back into the duckdb-ft exception it was; the connection ``duckdb_ft.connect()`` returns and
``duckdb_ft.execute()`` do so for every statement, so ``except duckdb_ft.PermissionDenied:`` works there.
"""

from __future__ import annotations

import re

import duckdb


class FtError(duckdb.Error):
    """Base class of every error raised by duckdb-ft."""


class InvalidArgument(FtError, duckdb.InvalidInputException):
    """An argument of a call is malformed or out of range (bad JSON, unknown option, wrong type...)."""


class NotFound(FtError, duckdb.CatalogException):
    """A named object (model, job, role) does not exist."""


class ModelNotFound(NotFound):
    """A model name resolves to neither a fine-tuned model, a built-in alias, a local folder nor a hub id."""


class ModelLoadError(FtError, duckdb.IOException):
    """A model exists but could not be loaded or converted (disk full, unwritable cache, corrupt file)."""


class RemoteError(FtError, duckdb.IOException):
    """A remote service (the Hugging Face Hub) is offline, unreachable, or refused the request."""


class AlreadyExists(FtError, duckdb.CatalogException):
    """An object of that name exists already."""


class PermissionDenied(FtError, duckdb.PermissionException):
    """The current role lacks a privilege; the message names the privilege and the object.

    Made by :meth:`of`, which formats every such message one way and keeps its parts as fields (``privilege``,
    ``object_kind``, ``object_name``, ``role``); a plain ``PermissionDenied(message)`` (one turned back from
    DuckDB's report by :func:`from_duckdb`) has them None.
    """

    #: The privilege of statements and objects that only the administrator may use.
    ADMINISTRATOR = "ADMINISTRATOR"

    privilege: str | None = None
    object_kind: str | None = None
    object_name: str | None = None
    role: str | None = None

    @classmethod
    def of(cls, privilege: str, kind: str | None = None, name: str | None = None, role: str | None = None, *,
           reason: str | None = None, hint: str | None = None) -> "PermissionDenied":
        """``Insufficient privileges[ to operate on <kind> '<name>']: <reason> (current role: <role>[; <hint>])``.

        ``privilege``: what is missing (``SELECT``, ``OWNERSHIP``, :attr:`ADMINISTRATOR`, ...); ``kind``, ``name``:
        the object (no kind: the statement as a whole; a kind without a name, e.g. ``temporary objects``, is named
        as is); ``reason``: what failed, by default ``<privilege> is required``; ``role``: the current role (None:
        not named); ``hint``: what to do, after the role.
        """
        where = "" if kind is None else f" to operate on {kind.lower()}" + ("" if name is None else f" '{name}'")
        tail = "; ".join(x for x in (f"current role: {role}" if role is not None else None, hint) if x)
        error = cls(f"Insufficient privileges{where}: {reason or f'{privilege} is required'}"
                    + (f" ({tail})" if tail else ""))
        error.privilege, error.object_kind, error.object_name, error.role = privilege, kind, name, role
        return error


class AuthenticationFailed(FtError, duckdb.PermissionException):
    """A password or access token was refused. One message for every cause (unknown user, wrong secret, expired
    or removed token, a role restriction no longer granted), so a caller learns nothing of which it was."""

    MESSAGE = "authentication failed: invalid, expired or revoked credentials"

    def __init__(self, message: str = MESSAGE):
        super().__init__(message)


class Interrupted(FtError, duckdb.InterruptException):
    """A blocking call was interrupted (``Connection.interrupt()``, Ctrl-C in the shell)."""


class JobError(FtError, duckdb.InvalidInputException):
    """A fine-tuning job cannot do what was asked in its current state."""


class QueueFull(FtError, duckdb.OperationalError):
    """A model's request queue is full (``ml/batcher.py``): retry later (HTTP 429 or 503)."""


class RequestTimeout(FtError, duckdb.OperationalError):
    """A request did not finish within its timeout (``ml/batcher.py``); its slot was freed."""


_UDF_ERROR = re.compile(r"Python exception occurred while executing the UDF: (\w+): (.*)", re.S)


def _classes(cls: type[FtError] = FtError) -> dict[str, type[FtError]]:
    out = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        out.update(_classes(sub))
    return out


def udf_error(error: BaseException) -> tuple[str, str] | None:
    """(exception class name, message) of an exception raised inside a Python UDF, as DuckDB reported it; or None."""
    if isinstance(error, FtError) or not isinstance(error, duckdb.Error):
        return None
    m = _UDF_ERROR.search(str(error))
    return (m.group(1), m.group(2).strip()) if m else None


def from_duckdb(error: BaseException) -> FtError | None:
    """The duckdb-ft error that DuckDB reported from inside one of our UDFs, or None for any other error."""
    found = udf_error(error)
    cls = _classes().get(found[0]) if found else None
    return cls(found[1]) if cls is not None else None
