"""The shell as a client of ``duckdb-ft serve``: :class:`Remote` is a connection-like object over the server's
SQL API (``POST /api/v2/statements``), which the shell drives as it drives a local connection (``sql()`` returns a
DuckDB relation to render, ``execute()`` / ``fetchall()`` serve the dot commands and job watching, ``interrupt()``
cancels the running statement). Each statement is a request of its own, run as the token's user (from
``DUCKDB_FT_TOKEN``); values come back as DuckDB wrote them and are cast back to their types in a private
in-memory database, so rendering is the local shell's. Errors are raised again as the classes the server named.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from typing import Any

import duckdb
import pyarrow as pa

from .. import errors

#: The environment variable holding the Bearer token of ``duckdb-ft --server URL``.
TOKEN_VARIABLE = "DUCKDB_FT_TOKEN"


class Remote:
    """A duckdb-ft server's SQL API as a connection (see the module docstring)."""

    remote = True

    def __init__(self, url: str, token: str, timeout: float | None = None):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self._local = duckdb.connect(":memory:")  # where results become typed relations; nothing else is here
        self._rows: list[tuple] = []
        self._description: list[tuple] | None = None
        self._running: str | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------- statements

    def sql(self, query: str, params: Any = None) -> Any:
        """Run one statement on the server; a relation over its result, or None when it has none."""
        answer = self._post_statement(query, params)
        row_type = answer.get("resultSetMetaData", {}).get("rowType") or []
        if not row_type:
            return None
        return self._relation([c["name"] for c in row_type], [c["type"] for c in row_type], answer.get("data") or [])

    def execute(self, query: str, parameters: Any = None) -> "Remote":
        rel = self.sql(query, parameters)
        self._rows = rel.fetchall() if rel is not None else []
        self._description = ([(c, str(t), None, None, None, None, None) for c, t in zip(rel.columns, rel.types)]
                             if rel is not None else None)
        return self

    def fetchall(self) -> list[tuple]:
        rows, self._rows = self._rows, []
        return rows

    def fetchone(self) -> tuple | None:
        return self._rows.pop(0) if self._rows else None

    @property
    def description(self) -> list[tuple] | None:
        return self._description

    def interrupt(self) -> None:
        """Cancel the statement running now (Ctrl-C in the shell), on the server."""
        with self._lock:
            handle = self._running
        if handle is not None:
            try:
                self._request(f"/api/v2/statements/{handle}/cancel", {})
            except (errors.FtError, duckdb.Error):
                pass  # it ended meanwhile

    def close(self) -> None:
        self._local.close()

    # --------------------------------------------------------------------------------------------- plumbing

    def _post_statement(self, query: str, params: Any) -> dict:
        handle = str(uuid.uuid4())
        body: dict[str, Any] = {"statement": query}
        if params:
            body["bindings"] = {str(i + 1): _binding(v) for i, v in enumerate(params)}
        with self._lock:
            self._running = handle
        try:
            return self._request(f"/api/v2/statements?requestId={handle}", body)
        finally:
            with self._lock:
                self._running = None

    def _request(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST", headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "Accept": "application/json", "User-Agent": "duckdb-ft-shell"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                answer = json.loads(e.read())
            except (json.JSONDecodeError, OSError):
                answer = {}
            raise _error(e.code, answer) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise errors.RemoteError(f"cannot reach the duckdb-ft server at {self.url}: {reason}") from None

    def _relation(self, names: list[str], types: list[str], data: list[list[str | None]]) -> Any:
        table = pa.table({f"c{i}": pa.array([r[i] for r in data], pa.string()) for i in range(len(names))})
        typed = ", ".join(f"CAST(c{i} AS {t}) AS {_quote(n)}" for i, (n, t) in enumerate(zip(names, types)))
        text = ", ".join(f"c{i} AS {_quote(n)}" for i, n in enumerate(names))
        try:
            typed_table = self._local.from_arrow(table).project(typed).to_arrow_table()
        except duckdb.Error:  # a type this DuckDB cannot read back from text: shown as the text it is
            return self._local.from_arrow(table).project(text)
        return self._local.from_arrow(typed_table)

    def __repr__(self) -> str:
        return f"<duckdb-ft server {self.url}>"


def _binding(value: Any) -> dict[str, Any]:
    kind = ("BOOLEAN" if isinstance(value, bool) else "FIXED" if isinstance(value, int) else
            "REAL" if isinstance(value, float) else "TEXT")
    return {"type": kind, "value": None if value is None else str(value).lower() if kind == "BOOLEAN" else str(value)}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _error(status: int, answer: dict) -> BaseException:
    """The exception a failed request stands for: the server's error class for a statement's error (so the shell
    prints it as it would locally), a RemoteError for a refused request (401, 413, ...)."""
    message = answer.get("message") or (answer.get("error") or {}).get("message") or f"HTTP {status}"
    kind = answer.get("errorType")
    ours = {c.__name__: c for c in _subclasses(errors.FtError)}.get(kind or "")
    if ours is not None:
        return ours(message)
    theirs = getattr(duckdb, kind or "", None)
    if isinstance(theirs, type) and issubclass(theirs, duckdb.Error) and status == 422:
        return theirs(message)
    return errors.RemoteError(f"the server refused the request (HTTP {status}): {message}")


def _subclasses(cls: type) -> list[type]:
    return [cls] + [s for sub in cls.__subclasses__() for s in _subclasses(sub)]
