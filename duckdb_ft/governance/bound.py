"""What DuckDB itself says a statement reads: its parser's tree (``json_serialize_sql``) and its bound plan
(``EXPLAIN (FORMAT json)``), every name resolved in DuckDB's catalog as database.schema.name.

Two readings, both DuckDB's, each sufficient to deny:

- the parse tree names every relation the text refers to (views too, which the plan expands away), every table
  function, every SHOW/DESCRIBE target and every PIVOT. A CTE name hides a table only inside the scope that
  defines it. Refs are resolved as DuckDB's binder would (a two-part name may be schema.table or database.table);
  a name that resolves to nothing of the main database (another database, a temporary table, a system view, a
  file name, a Python variable) is refused before anything binds.
- the bound plan names every base table actually scanned (views, macros and subqueries expanded by DuckDB's own
  binder) and every table function; binding executes nothing once the parse check has refused what would
  (PIVOT without an IN list, SHOW of a query, table functions that read files).

Anything this module cannot read is refused by its callers: deny by default.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import duckdb

from ..errors import PermissionDenied
from .calls import walk_node

#: Table functions a role may call: they read nothing outside the query (finetune/finetune_history are
#: duckdb-ft's own table macros, checked by their functions).
SAFE_TABLE_FUNCTIONS = {"range", "generate_series", "unnest", "json_each", "json_tree", "finetune",
                        "finetune_history", "finetune_evaluation", "finetune_evaluations",
                        "finetune_comparison", "finetune_data_report", "finetune_sweep", "finetune_usage"}
#: The plan operators of those (DuckDB's physical names); any other operator with a "Function" is refused.
SAFE_PLAN_FUNCTIONS = {"RANGE", "GENERATE_SERIES", "UNNEST", "JSON_EACH", "JSON_TREE"}

Name = tuple[str, str, str]  # (database, schema, name), as DuckDB's catalog spells them


@dataclass
class Reading:
    """What a query's parse tree names (unresolved: '' for a part not written)."""

    refs: set[Name] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    shows: set[str] = field(default_factory=set)  # SHOW/DESCRIBE of something that is not a query
    unbound_pivots: int = 0  # PIVOT without an IN list: DuckDB runs a query to bind it
    internal: set[str] = field(default_factory=set)  # duckdb-ft's internal UDFs named directly
    calls: set[str] = field(default_factory=set)  # every scalar function named (lower case, without its schema)
    named: set[Name] = field(default_factory=set)  # every call, as (catalog, schema, name): checked by .calls
    types: set[Name] = field(default_factory=set)  # every type named (casts, column types)
    sequences: set = field(default_factory=set)  # nextval/currval/setval's constant names (None: an expression)

    def merge(self, other: "Reading") -> None:
        self.refs |= other.refs
        self.functions |= other.functions
        self.shows |= other.shows
        self.unbound_pivots += other.unbound_pivots
        self.internal |= other.internal
        self.calls |= other.calls
        self.named |= other.named
        self.types |= other.types
        self.sequences |= other.sequences


def parse_query(cur: Any, sql: str) -> Reading:
    """DuckDB's parse tree of a query (SELECT, FROM-first, SHOW/DESCRIBE, PIVOT with IN, ...).

    Raises:
        PermissionDenied: DuckDB cannot serialize it (not one query it can show): it cannot be checked.
    """
    tree = json.loads(cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        raise PermissionDenied.of(PermissionDenied.ADMINISTRATOR, reason="this statement cannot be checked, so only "
                                  f"the administrator may run it ({tree.get('error_message')})")
    out = Reading()
    _walk(tree.get("statements", []), frozenset(), out)
    return out


def _walk(node: Any, scope: frozenset, out: Reading) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, scope, out)
        return
    if not isinstance(node, dict):
        return
    cte_map = node.get("cte_map")
    ctes = cte_map.get("map", []) if isinstance(cte_map, dict) else []
    if ctes:
        names = [str(c["key"]).lower() for c in ctes]
        for i, cte in enumerate(ctes):
            body = cte.get("value", {})
            recursive = (body.get("query_node") or {}).get("type") == "RECURSIVE_CTE_NODE"
            _walk(body, scope | set(names[:i + (1 if recursive else 0)]), out)  # earlier CTEs, itself if recursive
        scope = scope | set(names)
    kind = node.get("type")
    if kind == "BASE_TABLE":
        cat, sch, name = node.get("catalog_name") or "", node.get("schema_name") or "", node.get("table_name") or ""
        if cat or sch or name.lower() not in scope:
            out.refs.add((cat, sch, name))
    elif kind == "TABLE_FUNCTION":
        fn = node.get("function") or {}
        parts = [p for p in (fn.get("catalog"), fn.get("schema"), fn.get("function_name")) if p]
        out.functions.add(".".join(parts).lower() or "?")
    elif kind == "SHOW_REF" and node.get("query") is None:
        out.shows.add(node.get("table_name") or "?")
    elif kind == "PIVOT":
        for p in node.get("pivots") or []:
            if not p.get("entries") and not p.get("pivot_enum"):
                out.unbound_pivots += 1
    walk_node(node, out.named, out.types)
    if node.get("class") == "FUNCTION":
        fname = str(node.get("function_name", "")).lower()
        out.calls.add(fname)
        if fname.startswith("__ft_"):
            out.internal.add(fname)
        if fname in ("nextval", "currval", "setval"):
            out.sequences.add(_constant_text((node.get("arguments") or node.get("children") or [None])[0]))
    for key, value in node.items():
        if key != "cte_map":
            _walk(value, scope, out)


def _constant_text(arg: Any) -> str | None:
    """A call's argument when it is a string constant (DuckDB's serialized CONSTANT), else None."""
    if isinstance(arg, dict) and isinstance(arg.get("expression"), dict):
        arg = arg["expression"]
    literal = arg.get("literal") if isinstance(arg, dict) and arg.get("class") == "CONSTANT" else None
    if isinstance(literal, dict) and literal.get("kind") == "STRING":
        return str(literal.get("text"))
    value = arg.get("value") if isinstance(arg, dict) and arg.get("class") == "CONSTANT" else None
    if isinstance(value, dict) and isinstance(value.get("value"), str):
        return value["value"]
    return None


def plan_scans(cur: Any, sql: str, params: Any = None) -> tuple[set[Name], set[str]]:
    """The base tables DuckDB's bound plan of ``sql`` scans, and its table-function operators.

    Raises:
        PermissionDenied: DuckDB cannot bind it (the message is DuckDB's).
    """
    try:
        rows = cur.execute(f"EXPLAIN (FORMAT json) {sql}", params if params else None).fetchall()
    except duckdb.InterruptException:
        raise  # a cancel while the statement was being checked: cancelled, not refused
    except Exception as e:
        raise PermissionDenied.of(PermissionDenied.ADMINISTRATOR, reason="this statement cannot be checked, so only "
                                  f"the administrator may run it ({str(e).splitlines()[0]})") from None
    tables: set[Name] = set()
    functions: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for n in node:
                visit(n)
        elif isinstance(node, dict):
            info = node.get("extra_info")
            if isinstance(info, dict):
                if "Table" in info:
                    tables.add(split_name(str(info["Table"])))
                if "Function" in info:
                    functions.add(str(info["Function"]).upper())
            visit(node.get("children", []))

    for row in rows:
        visit(json.loads(row[-1]))
    return tables, functions


_PART = re.compile(r'"((?:[^"]|"")*)"|([^."]+)')


def split_name(text: str) -> Name:
    """``memory.main."secret"`` (DuckDB's plan spelling) → ('memory', 'main', 'secret')."""
    parts = [(q.replace('""', '"') if q or text[m.start()] == '"' else u) for m in _PART.finditer(text)
             for q, u in [m.groups()]]
    parts = ["", "", ""][: max(0, 3 - len(parts))] + parts
    return parts[-3], parts[-2], parts[-1]


class Resolver:
    """Names resolved as DuckDB's binder does, against the catalog as one connection sees it."""

    def __init__(self, cur: Any, default_schema: str, params: Any = None):
        self.params, self.text, self.checker = params, None, None  # the statement, its parameters, the checks
        self.default_schema = default_schema
        self.databases: set[str] = set()
        self.schemas: set[tuple[str, str]] = set()
        self.relations: dict[Name, tuple[Name, str]] = {}
        self.main = ""
        for what, db, sch, name in cur.execute(
                "SELECT 'MAIN', current_database(), NULL, NULL UNION ALL "
                "SELECT 'DATABASE', database_name, NULL, NULL FROM duckdb_databases() UNION ALL "
                "SELECT 'SCHEMA', database_name, schema_name, NULL FROM duckdb_schemas() UNION ALL "
                "SELECT 'TABLE', database_name, schema_name, table_name FROM duckdb_tables() UNION ALL "
                "SELECT 'VIEW', database_name, schema_name, view_name FROM duckdb_views() WHERE NOT internal"
        ).fetchall():
            if what == "MAIN":
                self.main = db
            elif what == "DATABASE":
                self.databases.add(db.lower())
            elif what == "SCHEMA":
                self.schemas.add((db.lower(), sch.lower()))
            else:
                self.relations[(db.lower(), sch.lower(), name.lower())] = ((db, sch, name), what)

    def is_main(self, database: str) -> bool:
        return database.lower() == self.main.lower()

    def target(self, ref: Name) -> Name:
        """Where an object named ``ref`` is (or would be created): (database, schema, name), lower-cased parts
        for those not in the catalog."""
        cat, sch, name = ref
        if not cat and sch and (self.main.lower(), sch.lower()) not in self.schemas \
                and sch.lower() in self.databases:
            cat, sch = sch, "main"  # DuckDB reads db.table as db.main.table when db is not a schema
        if not cat and not sch and (("temp", "main", name.lower()) in self.relations):
            cat, sch = "temp", "main"  # a temporary object shadows the database's
        cat, sch = cat or self.main, sch or self.default_schema
        found = self.relations.get((cat.lower(), sch.lower(), name.lower()))
        return found[0] if found else (cat, sch, name)

    def kind(self, name: Name) -> str | None:
        found = self.relations.get(tuple(p.lower() for p in name))
        return found[1] if found else None

    def local(self, name: Name, role: str) -> str:
        """``schema.name`` of an object of the main database; any other database is refused."""
        if not self.is_main(name[0]):
            temp = name[0].lower() == "temp"
            raise PermissionDenied.of(PermissionDenied.ADMINISTRATOR, "TEMPORARY OBJECTS" if temp else "DATABASE",
                                      None if temp else name[0], role,
                                      reason=f"only the main database '{self.main}' is governed, so "
                                             f"{'.'.join(name)} is for the administrator only")
        return f"{name[1]}.{name[2]}"
