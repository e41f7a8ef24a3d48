"""Sequences a user session reaches through the administrator's objects: USAGE on each, as PostgreSQL requires.

A user session may not call ``nextval``/``currval``/``setval`` itself (:mod:`.calls`), but the administrator's
objects may: a table's column DEFAULT, CHECK or generated column (``id INTEGER DEFAULT nextval('s')``) runs when
the user INSERTs or UPDATEs, a view's body when the user reads the view. PostgreSQL checks the sequence's USAGE for
the role whose statement advances it, whoever wrote the expression; so does duckdb-ft:

- ``GRANT USAGE ON SEQUENCE s TO ROLE r`` (the administrator; REVOKE takes it back; a dropped sequence's grants go
  with it) lets ``r``'s writes and reads advance ``s`` through those objects. Calling ``nextval('s')`` in the
  role's own SQL stays the administrator's (it is off the function allow-list).
- a user's INSERT or UPDATE of a table needs USAGE on every sequence the table's defaults, CHECKs and generated
  columns name (:func:`of_table`): what DuckDB's catalog records the table depends on
  (``duckdb_dependencies()``), and every sequence call DuckDB's parser (``json_serialize_sql``) finds in
  ``duckdb_columns().column_default`` and ``duckdb_constraints().expression``, the administrator's macros they call
  followed. A sequence named by an expression rather than a constant cannot be checked: it is refused.
- reading a view needs USAGE on every sequence its body names (:func:`of_reading`), on the same parse; the view's
  other functions run as the owner wrote them (the administrator chose to expose them by granting the view).

A refusal has the one privilege error shape, the same for a sequence that does not exist
(``Insufficient privileges to operate on sequence 'main.s': USAGE is required (current role: r)``), and comes
before anything runs, so the refused statement changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .bound import Reading, parse_query

if TYPE_CHECKING:
    from .roles import Checker

KIND = "SEQUENCE"
#: The functions that read or advance a sequence named by their first argument.
SEQUENCE_FUNCTIONS = frozenset({"nextval", "currval", "setval"})
#: The name reported for a sequence named by an expression (it cannot be checked, so it is refused).
COMPUTED = "<computed name>"


def lookup(cur: Any, name: str, schema: str) -> str | None:
    """``schema.name`` of a sequence of the main database that ``name`` (one, two or three parts) names from
    ``schema``, as DuckDB's binder finds it (the object's schema, then ``main``); None when there is none."""
    found = _resolve(cur, name, schema)
    return found if found and found.count(".") == 1 and _exists(cur, found) else None


def _sequences(cur: Any) -> dict[tuple[str, str, str], tuple[str, str, str]]:
    rows = cur.execute("SELECT database_name, schema_name, sequence_name FROM duckdb_sequences()").fetchall()
    return {tuple(p.lower() for p in r): r for r in rows}


def _exists(cur: Any, local: str) -> bool:
    main = cur.execute("SELECT current_database()").fetchall()[0][0]
    schema, name = local.split(".", 1)
    return (main.lower(), schema.lower(), name.lower()) in _sequences(cur)


def _resolve(cur: Any, text: str, schema: str) -> str:
    """The catalog's ``schema.name`` (``database.schema.name`` outside the main database) of the sequence ``text``
    names from ``schema``; a name that resolves to nothing is returned as it would be looked for."""
    parts = [p.strip().strip('"') for p in text.split(".")]
    main = cur.execute("SELECT current_database()").fetchall()[0][0]
    if len(parts) == 1:
        tries = [(main, schema, parts[0]), (main, "main", parts[0])]
    elif len(parts) == 2:
        tries = [(main, parts[0], parts[1]), (parts[0], "main", parts[1])]
    else:
        tries = [tuple(parts[-3:])]
    known = _sequences(cur)
    for attempt in tries:
        found = known.get(tuple(p.lower() for p in attempt))
        if found:
            return _local(found, main)
    return _local(tries[0], main)


def _local(name: Iterable[str], main: str) -> str:
    db, schema, seq = name
    return f"{schema}.{seq}" if db.lower() == main.lower() else f"{db}.{schema}.{seq}"


def of_reading(cur: Any, reading: Reading, schema: str, _seen: set | None = None) -> set[str]:
    """The sequences a parsed query's calls name (resolved from ``schema``), macros of the database followed;
    :data:`COMPUTED` for one named by an expression."""
    seen = set() if _seen is None else _seen
    out = {COMPUTED if s is None else _resolve(cur, s, schema) for s in reading.sequences}
    for catalog, sch, name in reading.named:
        if catalog == "system" or (catalog, sch, name) in seen or len(seen) > 64:
            continue
        seen.add((catalog, sch, name))
        for definition, macro_schema in _macros(cur, catalog, sch, name):
            out |= of_reading(cur, parse_query(cur, f"SELECT {definition}"), macro_schema, seen)
    return out


def _macros(cur: Any, catalog: str, schema: str, name: str) -> list[tuple[str, str]]:
    """Definitions of the scalar macros of that name outside DuckDB's system catalog."""
    rows = cur.execute("SELECT macro_definition, schema_name, database_name FROM duckdb_functions() "
                       "WHERE function_type = 'macro' AND database_name <> 'system' AND lower(function_name) = ? "
                       "AND macro_definition IS NOT NULL", [name]).fetchall()
    return [(d, s) for d, s, db in rows if (not catalog or db.lower() == catalog) and (not schema or
                                                                                     s.lower() == schema)]


def of_table(cur: Any, local: str) -> set[str]:
    """The sequences a table's defaults, CHECKs and generated columns reach (``local`` is ``schema.table`` of the
    main database): DuckDB's recorded dependencies, and every sequence call its parser finds in them."""
    schema, table = local.split(".", 1)
    where = "database_name = current_database() AND schema_name = ? AND table_name = ?"
    texts = [r[0] for r in cur.execute(f"SELECT column_default FROM duckdb_columns() WHERE {where} "
                                       "AND column_default IS NOT NULL", [schema, table]).fetchall()]
    texts += [r[0] for r in cur.execute(f"SELECT expression FROM duckdb_constraints() WHERE {where} "
                                        "AND constraint_type = 'CHECK' AND expression IS NOT NULL",
                                        [schema, table]).fetchall()]
    out: set[str] = set()
    for text in texts:
        out |= of_reading(cur, parse_query(cur, f"SELECT {text}"), schema)
    main = cur.execute("SELECT current_database()").fetchall()[0][0]
    for row in cur.execute(
            "SELECT DISTINCT s.database_name, s.schema_name, s.sequence_name FROM duckdb_dependencies() d "
            "JOIN duckdb_tables() t ON t.table_oid IN (d.objid, d.refobjid) "
            "JOIN duckdb_sequences() s ON s.sequence_oid IN (d.objid, d.refobjid) "
            "WHERE t.database_name = current_database() AND t.schema_name = ? AND t.table_name = ?",
            [schema, table]).fetchall():
        out.add(_local(row, main))
    return out


def require_usage(check: Checker, names: Iterable[str]) -> None:
    """USAGE on each sequence (the administrator has it on all); else the one privilege error."""
    if check.admin:
        return
    for name in sorted(names):
        if name == COMPUTED or not check.has("USAGE", KIND, name):
            check.deny("USAGE", KIND, name)
