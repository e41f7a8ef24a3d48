"""The SQL surface: thin layers between DuckDB and the core.

- :mod:`.engine`: per-database state (:class:`Engine`), per-connection sessions, the registry of engines.
- :mod:`.functions`: registers the UDFs and macros (``finetune``, ``complete``, the Cortex names); nothing else
  calls ``create_function``. :mod:`.actions`: FINETUNE's action table.
- :mod:`.grammar` and :mod:`.statements`: duckdb-ft's own statements (GRANT, CREATE ROLE, SHOW MODELS, ...),
  parsed and handled. :mod:`.router`: one statement to its handler, or (authorized) to DuckDB.
- :mod:`.connection`: the connection ``connect()`` returns, and ``execute()``.
"""
