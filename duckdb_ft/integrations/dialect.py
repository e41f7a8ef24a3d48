"""The SQLAlchemy dialect ``duckdb_ft://``: duckdb_engine's DuckDB dialect whose connections are duckdb-ft's.

``create_engine("duckdb_ft:///shop.duckdb?user=alice")`` opens the file with ``duckdb_ft.connect(path,
user="alice")``: the functions (COMPLETE, FINETUNE, the Cortex names), duckdb-ft's statements through ``text()``
(GRANT, SHOW MODELS, DROP MODEL), and the user's privileges, so pandas' ``read_sql``, jupysql's ``%sql`` and
SQLAlchemy-based BI tools get all three. No ``user``: the database administrator. Registered as the entry point
``duckdb_ft`` of ``sqlalchemy.dialects`` (the ``sqlalchemy`` extra installs duckdb_engine).

URL query options: ``user``, ``resume_jobs`` (true/false) and ``read_only`` (true/false) are duckdb-ft's; any other
is a DuckDB setting (``?threads=2``), as in duckdb_engine. ``connect_args`` may carry the same names and ``config``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duckdb_engine

from ..errors import InvalidArgument
from .dbapi import DBAPIConnection

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

#: The URL options duckdb-ft reads; every other option is a DuckDB setting.
OPTIONS = ("user", "resume_jobs", "read_only")


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise InvalidArgument(f"duckdb_ft URL option {name}={value!r}: use true or false")


class Dialect(duckdb_engine.Dialect):
    """duckdb_engine's dialect (name ``duckdb``, so tools treat it as DuckDB), driver ``duckdb_ft``."""

    driver = "duckdb_ft"
    supports_statement_cache = False

    def create_connect_args(self, url: "URL") -> tuple[tuple, dict]:
        query = dict(url.query)
        options = {name: query.pop(name) for name in OPTIONS if name in query}
        return (), {"database": url.database or ":memory:", "url_config": query, **options}

    def connect(self, *cargs: Any, **cparams: Any) -> DBAPIConnection:
        import duckdb_ft

        database = cparams.pop("database", cargs[0] if cargs else ":memory:")
        config = dict(cparams.pop("config", {}) or {})
        config.update(cparams.pop("url_config", {}) or {})
        user = cparams.pop("user", None) or None
        resume_jobs = _flag("resume_jobs", cparams.pop("resume_jobs", False))
        read_only = _flag("read_only", cparams.pop("read_only", False))
        if cparams:
            raise InvalidArgument(f"duckdb_ft connection arguments {', '.join(sorted(cparams))} are unknown: "
                                  f"use {', '.join(OPTIONS)} or config")
        con = duckdb_ft.connect(None if database == ":memory:" else database, user=user, read_only=read_only,
                                config=config, resume_jobs=resume_jobs)
        return DBAPIConnection(con)

    def _get_default_schema_name(self, connection: Any) -> str:
        """The session's schema, read without SQL (``current_schema()`` is the administrator's)."""
        return connection.connection.dbapi_connection.ft.session.schema
