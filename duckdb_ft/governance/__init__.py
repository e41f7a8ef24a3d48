"""Governance: who may do what.

- :mod:`.roles`: roles, their hierarchy, and the privilege checks of a session's current role (:class:`Checker`).
- :mod:`.bound`: what DuckDB itself says a statement reads: its parse tree (``json_serialize_sql``) and its bound
  plan (``EXPLAIN``), names resolved in DuckDB's catalog as database.schema.name.
- :mod:`.authorize`: a non-administrator's plain SQL (and FINETUNE's queries), authorized on that before DuckDB runs
  it; ownership of what it creates, recorded in the same transaction.
- :mod:`.calls` (with the data of :mod:`.function_list`): the functions and types a user may name, an allow-list
  derived from DuckDB's own function catalog.
- :mod:`.calls` (with the data of :mod:`.function_list`): the functions and types a user may name, an allow-list
  derived from DuckDB's own function catalog.
- :mod:`.sequences`: USAGE on the sequences a user's write or read reaches through the administrator's table
  defaults, CHECKs, generated columns and view bodies.
- :mod:`.sqlglot_reads`: sqlglot's reading (a second reading of the text, never what a decision rests on) of a
  statement (``tables_read``), still used by the evaluation's sql_match sandbox; authorize.py uses sqlglot only to
  name DML/DDL targets.

Deny by default: a statement shape :mod:`.authorize` does not name is for the administrator only.
"""
