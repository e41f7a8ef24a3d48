"""A non-administrator's plain SQL: authorized on what DuckDB itself parses and binds, before DuckDB runs it; and
ownership of what it creates, recorded in the same transaction.

Deny by default. DuckDB's own parser splits the text and names each statement's type; a user session may run:

- queries (SELECT, FROM-first, VALUES, set operations, PIVOT with an IN list, UNPIVOT, DESCRIBE/SUMMARIZE of a
  table or a query it may read): SELECT on every relation DuckDB's parse tree names and every base table its bound
  plan scans (:mod:`.bound`), views followed to their tables;
- INSERT / UPDATE / DELETE: the privilege on the target, SELECT on everything else the plan scans (and on the
  target too when the statement reads it, or returns rows with RETURNING); INSERT / UPDATE: USAGE on the
  sequences the target's defaults, CHECKs and generated columns call (:mod:`.sequences`), as on those a view
  read calls;
- CREATE TABLE / CREATE VIEW in the main database: CREATE TABLE/VIEW on the schema, SELECT on what it reads;
  replacing an object needs its ownership; DROP TABLE / DROP VIEW: ownership;
- transactions (BEGIN, COMMIT, ROLLBACK) and ``SET VARIABLE`` (its value authorized as a query).

Everything else is for the administrator: SET/RESET/USE, PRAGMA, ATTACH/DETACH, COPY, EXPORT/IMPORT, INSTALL/LOAD,
CALL, EXPLAIN, CREATE of anything else (macros, secrets, temporary tables, sequences, ...), SHOW of the catalog
(SHOW TABLES lists what the role may not see), PIVOT without an IN list (DuckDB runs a query to bind it), table
functions other than :data:`bound.SAFE_TABLE_FUNCTIONS`, scalar/aggregate/window functions off the allow-list and
types the administrator created (:mod:`.calls`), other databases, the ``duckdb_ft`` schema, and
duckdb-ft's internal functions (``__ft_*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import duckdb
import sqlglot
from sqlglot import exp

from .. import catalog
from ..catalog import access as accessdb, objects
from ..errors import InvalidArgument, PermissionDenied
from ..queries import DIALECT
from . import sequences
from .calls import check_calls, outside_queries
from .bound import SAFE_PLAN_FUNCTIONS, SAFE_TABLE_FUNCTIONS, Reading, Resolver, parse_query, plan_scans

if TYPE_CHECKING:
    from ..surface.engine import Session
    from .roles import Checker


@dataclass
class Decision:
    """One authorized statement: its text, DuckDB's type, and the objects it reads, writes, creates or drops."""

    text: str
    kind: str
    reads: set[str] = field(default_factory=set)  # schema.name of the main database
    writes: set[str] = field(default_factory=set)
    creates: tuple[str, str] | None = None  # (TABLE|VIEW, schema.name)
    drops: list[tuple[str, str]] = field(default_factory=list)


_UNBOUND_PIVOT = ("a PIVOT without an IN list runs a query while DuckDB binds it, so only the administrator may run "
                  "one; list the values instead: PIVOT t ON c IN ('a', 'b') USING count(*)")


def _deny(what: str, session: Session) -> PermissionDenied:
    return PermissionDenied.of(PermissionDenied.ADMINISTRATOR, role=session.role, reason=what)


def authorize(session: Session, sql: str, con: Any = None, params: Any = None) -> list[Decision]:
    """Check a non-administrator's plain SQL before DuckDB runs it; one :class:`Decision` per statement.

    ``con`` is the session's own DuckDB connection (its temporary objects and macros), or None for the engine's.

    Raises:
        PermissionDenied: a statement the current role may not run, naming the missing privilege and object.
        duckdb.ParserException: DuckDB cannot parse the text.
    """
    cur = con if con is not None else session.engine.cursor()
    statements = cur.extract_statements(sql)
    return [_statement(session, cur, st.type.name, st.query.strip(), params if len(statements) == 1 else None)
            for st in statements]


def authorize_query(session: Session, cur: Any, sql: str, what: str = "query") -> set[str]:
    """A query that duckdb-ft runs for the session (a FINETUNE training query, ...): SELECT on what it reads,
    and no FINETUNE inside it. Returns what it reads (schema.name). The administrator passes every check."""
    try:
        statements = cur.extract_statements(sql)
    except duckdb.Error as e:
        raise InvalidArgument(f"cannot parse SQL of the {what}: {str(e).splitlines()[0]}") from None
    if len(statements) != 1 or statements[0].type.name != "SELECT":
        raise PermissionDenied(f"the {what} must be one SELECT statement")
    reading = parse_query(cur, statements[0].query)
    nested = {f for f in reading.functions | reading.calls if f.split(".")[-1] in ("finetune", "__ft_finetune")}
    if nested or reading.internal:
        raise PermissionDenied(f"the {what} may not call duckdb-ft's internal functions or start another "
                               f"fine-tuning job ({', '.join(sorted(nested | reading.internal))})")
    if session.is_admin:
        return set()
    res = Resolver(cur, session.schema)
    res.checker = session.checker()
    return _check_query(session, cur, res, reading, sql)


def _check_reading(session: Session, reading: Reading) -> None:
    if reading.internal:
        raise _deny(f"duckdb-ft's internal functions ({', '.join(sorted(reading.internal))}) are called only "
                    "through finetune(), complete() and the other public functions", session)
    if reading.unbound_pivots:
        raise _deny(_UNBOUND_PIVOT, session)
    if reading.shows:
        raise _deny(f"SHOW {', '.join(sorted(reading.shows))} lists objects of the database, for the administrator "
                    "only; DESCRIBE a table or query you may read (DESCRIBE SELECT * FROM t)", session)
    external = sorted(f for f in reading.functions if f not in SAFE_TABLE_FUNCTIONS)
    if external:
        raise _deny(f"reading files, other databases or the system catalog ({', '.join(external)}) is for the "
                    f"administrator only", session)


def _check_query(session: Session, cur: Any, res: Resolver, reading: Reading, plan_sql: str | None,
                 exclude_scans: set[str] = frozenset()) -> set[str]:
    """SELECT on what the parse names (checked before binding) and on what the plan scans."""
    _check_reading(session, reading)
    check_calls(session, cur, reading.named, reading.types)
    check = res.checker
    names = _names_read(session, cur, res, reading, check, set())
    if plan_sql is None:
        return names
    tables, functions = plan_scans(cur, plan_sql, res.params if plan_sql is res.text else None)
    unsafe = sorted(functions - SAFE_PLAN_FUNCTIONS)
    if unsafe:
        raise _deny(f"reading files, other databases or the system catalog ({', '.join(unsafe).lower()}) is for "
                    "the administrator only", session)
    scanned = {res.local(t, session.role) for t in tables} - set(exclude_scans)
    for name in tables:
        if res.local(name, session.role) in scanned:
            _require_select(session, res, name)
    return names | scanned


def _require_select(session: Session, res: Resolver, name: tuple[str, str, str]) -> str:
    """SELECT on one relation of the main database (resolved), which must exist and not be duckdb-ft's."""
    local = res.local(name, session.role)
    if name[1].lower() == catalog.SCHEMA:
        raise PermissionDenied.of(PermissionDenied.ADMINISTRATOR, "SCHEMA", catalog.SCHEMA,
                                  reason="the duckdb-ft catalog is reached only through its functions and statements")
    kind = res.kind(name)
    if kind is None:
        raise PermissionDenied.of("SELECT", "TABLE", local, session.role,
                                  reason="it does not exist or is not a table of this database")
    res.checker.require("SELECT", kind, local)
    return local


def _names_read(session: Session, cur: Any, res: Resolver, reading: Reading, check: Checker,
                seen: set[str]) -> set[str]:
    """SELECT on every relation the parse names, views followed (on DuckDB's parse of their query) to theirs."""
    names = set()
    for ref in reading.refs:
        target = res.target(ref)
        local = _require_select(session, res, target)
        names.add(local)
        if res.kind(target) == "VIEW" and local not in seen and len(seen) < 64:
            seen.add(local)
            sql = objects.view_sql(cur, local)
            if sql:
                inner = Resolver(cur, local.split(".", 1)[0])
                inner.checker = check
                view = _queries(session, cur, _one_sqlglot(session, sql))
                _check_reading(session, view)
                sequences.require_usage(check, sequences.of_reading(cur, view, local.split(".", 1)[0]))
                names |= _names_read(session, cur, inner, view, check, seen)
    return names


def _one_sqlglot(session: Session, text: str) -> exp.Expression:
    try:
        parsed = [e for e in sqlglot.parse(text, read=DIALECT) if e is not None]
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
        parsed = []
    if len(parsed) != 1:
        raise _deny("this statement cannot be checked, so only the administrator may run it", session)
    return parsed[0]


def _queries(session: Session, cur: Any, stmt: exp.Expression) -> Reading:
    """DuckDB's parse of every query inside a DML/DDL statement (each outermost query, with the statement's CTEs)."""
    out = Reading()
    with_ = stmt.args.get("with")
    prefix = with_.sql(dialect=DIALECT) + " " if with_ is not None else ""
    for node in stmt.walk():
        if isinstance(node, exp.Query) and not isinstance(node, exp.With) \
                and node.find_ancestor(exp.Query, exp.With) is None:
            out.merge(parse_query(cur, prefix + node.sql(dialect=DIALECT)))
    for text in outside_queries(stmt):  # SET values, VALUES rows, defaults, column types: their calls and types
        out.merge(parse_query(cur, text))
    for func in stmt.find_all(exp.Anonymous, exp.Func):
        name = func.sql_name().lower() if not isinstance(func, exp.Anonymous) else str(func.this).lower()
        if name.startswith("__ft_"):
            out.internal.add(name)
    return out


def _target(session: Session, res: Resolver, table: Any) -> tuple[str, str, str]:
    if isinstance(table, exp.Schema):
        table = table.this
    if not isinstance(table, exp.Table) or not table.name:
        raise _deny("this statement's target cannot be checked, so only the administrator may run it", session)
    name = res.target((table.catalog, table.db, table.name))
    local = res.local(name, session.role)
    if local.split(".", 1)[0] == catalog.SCHEMA:
        raise PermissionDenied.of(PermissionDenied.ADMINISTRATOR, "SCHEMA", catalog.SCHEMA,
                                  reason="the duckdb-ft catalog changes only through its functions and statements")
    return name


def _statement(session: Session, cur: Any, kind: str, text: str, params: Any = None) -> Decision:
    d = Decision(text, kind)
    if kind == "TRANSACTION":  # reads no catalog: a ROLLBACK runs in a transaction an error aborted
        _transaction(session, cur, None, d)
        return d
    res = Resolver(cur, session.schema, params)
    res.text, res.checker = text, session.checker()
    check = STATEMENTS.get(kind)
    if check is None:
        raise _deny(ADMIN_ONLY.get(kind) or f"{kind} is for the administrator only", session)
    check(session, cur, res, d)
    return d


def _query(session: Session, cur: Any, res: Resolver, d: Decision) -> None:
    d.reads = _check_query(session, cur, res, parse_query(cur, d.text), d.text)


def _transaction(session: Session, cur: Any, res: Resolver, d: Decision) -> None:
    word = d.text.split()[0].upper() if d.text.split() else ""
    session.in_transaction = word in ("BEGIN", "START") or (session.in_transaction and word not in (
        "COMMIT", "END", "ROLLBACK", "ABORT"))


def _set_variable(session: Session, cur: Any, res: Resolver, d: Decision) -> None:
    stmt = _one_sqlglot(session, d.text)
    items = stmt.expressions if isinstance(stmt, exp.Set) else []
    if not items or any(str(i.args.get("kind") or "").upper() != "VARIABLE" for i in items):
        raise _deny("SET is for the administrator only (a user session may SET VARIABLE)", session)
    for item in items:
        value = item.this.expression if isinstance(item.this, exp.EQ) else None
        if value is None:
            raise _deny("this SET VARIABLE cannot be checked, so only the administrator may run it", session)
        query = f"SELECT {value.sql(dialect=DIALECT)}"
        d.reads |= _check_query(session, cur, res, parse_query(cur, query), query)


def _write(session: Session, cur: Any, res: Resolver, d: Decision) -> None:
    """INSERT, UPDATE, DELETE: the privilege on the target, SELECT on what else is read."""
    stmt = _one_sqlglot(session, d.text)
    if not isinstance(stmt, (exp.Insert, exp.Update, exp.Delete)):
        raise _deny("this statement cannot be checked, so only the administrator may run it", session)
    target = _target(session, res, stmt.this)
    local = res.local(target, session.role)
    res.checker.require(d.kind, res.kind(target) or "TABLE", local)
    if d.kind != "DELETE" and res.kind(target) == "TABLE":  # its defaults, CHECKs, generated columns run
        sequences.require_usage(res.checker, sequences.of_table(cur, local))
    returning = stmt.args.get("returning") is not None or "returning" in d.text.lower()
    keep = set() if returning or d.kind == "INSERT" else {local}  # UPDATE/DELETE scan their own target
    if returning:
        _require_select(session, res, target)  # RETURNING shows the target's rows
    d.reads = _check_query(session, cur, res, _queries(session, cur, stmt), d.text, keep)
    d.writes = {local}


def _create(session: Session, cur: Any, res: Resolver, d: Decision) -> None:
    stmt = _one_sqlglot(session, d.text)
    ckind = str(stmt.args.get("kind") or "").upper() if isinstance(stmt, exp.Create) else ""
    if ckind not in ("TABLE", "VIEW") or stmt.find(exp.TemporaryProperty) is not None:
        raise _deny("CREATE of anything but a table or view of the main database is for the administrator only",
                    session)
    target = _target(session, res, stmt.this)
    local = res.local(target, session.role)
    check = res.checker
    check.require(f"CREATE {ckind}", "SCHEMA", local.split(".", 1)[0])
    existing = res.kind(target)
    if existing and not check.owns(existing, local) and (stmt.args.get("replace") or not stmt.args.get("exists")):
        raise PermissionDenied.of("OWNERSHIP", existing, local, session.role,
                                  reason="it exists and replacing it needs OWNERSHIP")
    query = stmt.expression  # its query, or none: column types and defaults are checked all the same
    plan = None if query is None else d.text if ckind == "TABLE" else query.sql(dialect=DIALECT)
    d.reads = _check_query(session, cur, res, _queries(session, cur, stmt), plan) - {local}
    d.creates = (ckind, local)


def _drop(session: Session, cur: Any, res: Resolver, d: Decision) -> None:
    stmt = _one_sqlglot(session, d.text)
    dkind = str(stmt.args.get("kind") or "").upper() if isinstance(stmt, exp.Drop) else ""
    if dkind not in ("TABLE", "VIEW") or stmt.args.get("cascade"):
        raise _deny("DROP of anything but a table or view (without CASCADE) is for the administrator only", session)
    for table in stmt.find_all(exp.Table):
        target = _target(session, res, table)
        local = res.local(target, session.role)
        if res.kind(target) is None:
            continue  # DuckDB says whether it exists (IF EXISTS or an error)
        res.checker.require_owner(res.kind(target), local, f"DROP {dkind}")
        d.drops.append((res.kind(target), local))


#: What a user session may run, by the statement type DuckDB's parser names (as sqlglot's STATEMENT_PARSERS: a
#: kind -> its check, which fills in the :class:`Decision` or raises PermissionDenied). Adding a statement kind is
#: one entry here; every other kind is in :data:`ADMIN_ONLY`.
STATEMENTS: dict[str, Callable[[Session, Any, Resolver, Decision], None]] = {
    "SELECT": _query,  # SELECT, FROM-first, VALUES, set operations, PIVOT ... IN, UNPIVOT, DESCRIBE, SUMMARIZE
    "TRANSACTION": _transaction,
    "SET": _set_variable,
    "INSERT": _write,
    "UPDATE": _write,
    "DELETE": _write,
    "CREATE": _create,
    "DROP": _drop,
}
#: Every other statement type DuckDB's parser names: for the administrator only, with the reason a denial gives
#: (None: "<kind> is for the administrator only"). A test checks that the two tables cover DuckDB's types.
ADMIN_ONLY: dict[str, str | None] = {
    **dict.fromkeys(("INVALID", "PREPARE", "EXECUTE", "ALTER", "COPY", "ANALYZE", "VARIABLE_SET", "CREATE_FUNC",
                     "EXPLAIN", "EXPORT", "PRAGMA", "VACUUM", "CALL", "LOAD", "RELATION", "EXTENSION",
                     "LOGICAL_PLAN", "ATTACH", "DETACH", "COPY_DATABASE", "MERGE_INTO")),
    # DuckDB's PIVOT without an IN list: a query at bind time, then the statement
    "MULTI": _UNBOUND_PIVOT,
}


# ---------------------------------------------------------------------------------------------- ownership

def _oid(con: Any, local: str) -> int | None:
    schema, name = local.split(".", 1)
    rows = con.execute("SELECT table_oid FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ? "
                       "AND table_name = ? UNION ALL SELECT view_oid FROM duckdb_views() WHERE database_name = "
                       "current_database() AND schema_name = ? AND view_name = ? AND NOT internal",
                       [schema, name, schema, name]).fetchall()
    return rows[0][0] if rows else None


def run_owned(session: Session, con: Any, d: Decision, run: Any) -> Any:
    """Run a CREATE or DROP (``run()``) and record what the catalog then says was created or dropped, in one
    transaction: the session's own if it opened one (a ROLLBACK takes the owner row too), else a new one.
    ``CREATE ... IF NOT EXISTS`` of an existing object changes no owner; DROP removes the owner row and grants."""
    own = not session.in_transaction  # else: inside the session's transaction, which decides
    if own:
        con.execute("BEGIN TRANSACTION")
    try:
        names = [d.creates[1]] if d.creates else [n for _, n in d.drops]
        before = {n: _oid(con, n) for n in names}
        result = run()
        for n in names:
            after = _oid(con, n)
            if d.creates and after is not None and after != before[n]:
                accessdb.set_owner(con, d.creates[0], n, session.role)
            elif not d.creates and before[n] is not None and after is None:
                accessdb.forget_object(con, n)
        if own:
            con.execute("COMMIT")
    except BaseException:
        if own:
            con.execute("ROLLBACK")
        raise
    return result
