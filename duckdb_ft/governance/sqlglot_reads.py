"""sqlglot's reading of a statement: the tables and views it names, and its table functions.

A second reading of the text, not DuckDB's: the authorizer decides on DuckDB's own parse and plan
(:mod:`.bound`, :mod:`.authorize`). This reading serves EVALUATE's sql_match sandbox, which copies the tables its
reference queries read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp

from ..errors import InvalidArgument
from ..queries import parse

@dataclass
class Access:
    """The objects one DuckDB statement touches, found with sqlglot."""

    kind: str  # the statement's kind: SELECT, INSERT, UPDATE, DELETE, CREATE TABLE, CREATE VIEW, DROP, ...
    reads: set[str] = field(default_factory=set)  # qualified tables or views
    writes: set[str] = field(default_factory=set)
    creates: tuple[str, str] | None = None  # (TABLE|VIEW, qualified name)
    table_functions: set[str] = field(default_factory=set)


#: Table functions that read nothing outside the database; any other (read_csv, glob, query, a file name in FROM)
#: is external access, for the administrator only.
SAFE_TABLE_FUNCTIONS = {"range", "generate_series", "unnest", "finetune", "finetune_history", "json_each",
                        "json_tree", "explode", "finetune_evaluation", "finetune_evaluations",
                        "finetune_comparison", "finetune_data_report", "finetune_sweep"}


def _qualify(table: exp.Table, default_schema: str) -> str:
    schema = table.db or default_schema
    return f"{schema.lower()}.{table.name.lower()}"


def tables_read(stmt: exp.Expression, default_schema: str = "main") -> tuple[set[str], set[str]]:
    """Tables and views a statement reads (CTE names excluded), and the table functions it calls."""
    ctes = {c.alias_or_name.lower() for c in stmt.find_all(exp.CTE)}
    tables, functions = set(), set()
    for table in stmt.find_all(exp.Table):
        if isinstance(table.this, exp.Anonymous):  # FROM read_csv(...), FROM query(...)
            functions.add(table.this.name.lower())
        elif isinstance(table.this, exp.Func):  # functions sqlglot knows: FROM range(3), FROM read_parquet(...)
            functions.add(table.this.sql_name().lower())
        elif isinstance(table.this, exp.Literal):  # FROM 'data.csv': DuckDB reads the file
            functions.add("file")
        elif table.name and not (not table.db and table.name.lower() in ctes):
            tables.add(_qualify(table, default_schema))
    return tables, functions


def analyze(sql: str, default_schema: str = "main") -> Access:
    """What one DuckDB statement reads, writes and creates (for a non-administrator's plain SQL).

    Raises:
        InvalidArgument: not exactly one statement, or a statement sqlglot cannot read.
    """
    statements = parse(sql)
    if len(statements) != 1:
        raise InvalidArgument(f"expected one statement, got {len(statements)}")
    stmt = statements[0]
    reads, functions = tables_read(stmt, default_schema)
    if isinstance(stmt, exp.Query):
        return Access("SELECT", reads=reads, table_functions=functions)
    if isinstance(stmt, (exp.Insert, exp.Update, exp.Delete)):
        target = stmt.this
        if isinstance(target, exp.Schema):
            target = target.this
        name = _qualify(target, default_schema) if isinstance(target, exp.Table) else None
        kind = stmt.key.upper()
        acc = Access(kind, reads=reads - ({name} if name and kind == "INSERT" else set()), table_functions=functions)
        if name:
            acc.writes.add(name)
        return acc
    if isinstance(stmt, exp.Create) and str(stmt.args.get("kind", "")).upper() in ("TABLE", "VIEW"):
        kind = str(stmt.args["kind"]).upper()
        target = stmt.this.this if isinstance(stmt.this, exp.Schema) else stmt.this
        name = _qualify(target, default_schema)
        return Access(f"CREATE {kind}", reads=reads - {name}, creates=(kind, name), table_functions=functions)
    if isinstance(stmt, exp.Drop) and str(stmt.args.get("kind", "")).upper() in ("TABLE", "VIEW"):
        names = {_qualify(t, default_schema) for t in stmt.find_all(exp.Table)}
        return Access(f"DROP {str(stmt.args['kind']).upper()}", writes=names)
    if isinstance(stmt, exp.Set) and stmt.expressions and all(
            str(item.args.get("kind") or "").upper() == "VARIABLE" for item in stmt.expressions):
        return Access("SET VARIABLE", reads=reads, table_functions=functions)  # a session variable, not config
    kind = stmt.key.upper() if not isinstance(stmt, exp.Command) else str(stmt.this).upper()
    return Access(kind, reads=reads, table_functions=functions)
