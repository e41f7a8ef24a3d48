"""ESTIMATE's scratch database: a private in-memory DuckDB database that holds the staged rows and every table of
the analysis, with a memory limit and a temporary directory of its own, so that ESTIMATE's memory stays bounded
whatever the number of rows: past the limit DuckDB spills those tables and its joins, sorts and aggregates to that
directory. The user's connection and its settings are not touched (DuckDB's ``memory_limit`` and
``temp_directory`` are settings of a whole database, shared by every connection to it): only the queries'
results are read from it, streamed in Arrow record batches.

The database is closed and its directory removed, spilled files included, when ESTIMATE ends, whether it returns
or fails. The limit is ``DEFAULT_MEMORY_LIMIT`` unless the environment variable ``DUCKDB_FT_ESTIMATE_MEMORY_LIMIT``
sets another, in DuckDB's syntax (``"1GiB"``, ``"800MB"``); the threads are the user's connection's ``threads``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import InvalidArgument

MEMORY_ENV = "DUCKDB_FT_ESTIMATE_MEMORY_LIMIT"
DEFAULT_MEMORY_LIMIT = "256MiB"  # past it the tables spill; 1M short rows took no longer than under 512MiB
PREFIX = "duckdb_ft_estimate_"  # the temporary directory's name starts so, under tempfile.gettempdir()


def memory_limit() -> str:
    """The scratch database's memory limit: the environment's, else the default."""
    return os.environ.get(MEMORY_ENV, "").strip() or DEFAULT_MEMORY_LIMIT


@contextmanager
def database(user_cur: Any) -> Iterator[Any]:
    """A new scratch database (a DuckDB connection), with the user's connection's thread count; removed, files
    and all, on exit."""
    import duckdb

    threads = int(user_cur.execute("SELECT current_setting('threads')").fetchall()[0][0])
    folder = tempfile.mkdtemp(prefix=PREFIX)
    try:
        con = duckdb.connect(":memory:", config={
            "temp_directory": os.path.join(folder, "spill"), "threads": threads,
            "autoinstall_known_extensions": False, "autoload_known_extensions": False})
        try:
            con.execute("SET enable_progress_bar = false")  # DuckDB would draw a bar on stdout past 2 s
        except duckdb.Error:  # Jupyter without ipywidgets: the bar is off there already, and the setting locked
            pass
        try:
            con.execute(f"SET memory_limit = '{memory_limit().replace(chr(39), '')}'")
        except duckdb.Error as e:
            con.close()
            raise InvalidArgument(f"ESTIMATE's memory limit {memory_limit()!r} (the environment variable "
                                  f"{MEMORY_ENV}) is not one DuckDB accepts ({str(e).splitlines()[0]}): use "
                                  f"e.g. '1GiB' or '800MB', or unset it for {DEFAULT_MEMORY_LIMIT}") from None
        try:
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
