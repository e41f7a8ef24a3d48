"""Routes one SQL statement: duckdb-ft's own statements to the core, everything else to DuckDB.

The shell, ``duckdb_ft.connect()``'s connections and ``duckdb_ft.execute(con, sql)`` send every statement through
:func:`execute`, so statements DuckDB cannot parse (GRANT, CREATE ROLE, SHOW MODELS, ...) work there, and a
non-administrator session's plain SQL is authorized before DuckDB runs it.
"""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from . import access, catalog, statements
from .engine import Session
from .errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from .statements import FtStatement

#: Plain statements a non-administrator may run (each authorized by what it reads, writes or creates).
USER_STATEMENTS = {"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE TABLE", "CREATE VIEW", "DROP TABLE",
                   "DROP VIEW", "DESCRIBE", "SHOW", "TRANSACTION", "COMMIT", "ROLLBACK", "SET VARIABLE"}
OBJECT_PRIVILEGES = {
    "TABLE": {"SELECT", "INSERT", "UPDATE", "DELETE", "OWNERSHIP", "ALL"},
    "VIEW": {"SELECT", "OWNERSHIP", "ALL"},
    "ALL TABLES": {"SELECT", "INSERT", "UPDATE", "DELETE", "ALL"},
    "SCHEMA": {"USAGE", "CREATE MODEL", "CREATE TABLE", "CREATE VIEW", "ALL"},
    "MODEL": {"USAGE", "OWNERSHIP", "ALL"},
}


def session_of(con: Any) -> Session:
    from .extension import engine_of

    engine = engine_of(con)
    return engine.session(con.execute("SELECT __ft_session_id()").fetchall()[0][0])


def execute(con: Any, sql: str, params: Any = None) -> Any:
    """Run one statement on a raw DuckDB connection with duckdb-ft installed.

    Returns a DuckDB relation (or None for statements without a result); duckdb-ft's own statements return
    their rows as a relation too.
    """
    from .connection import Connection

    if isinstance(con, Connection):
        return con.sql(sql, params=params) if params is None else con.execute(sql, params)
    session = session_of(con)
    result = run(session, con, sql, params)
    if isinstance(result, pa.Table):
        return con.from_arrow(result)
    return result


def run(session: Session, con: Any, sql: str, params: Any = None) -> Any:
    """Run one statement for ``session``: a pyarrow Table for duckdb-ft statements, else DuckDB's result."""
    st = statements.parse_ft_statement(sql) if isinstance(sql, str) else None
    if st is not None:
        return HANDLERS[st.kind](session, st)
    if not session.is_admin:
        authorize(session, sql)
    result = con.sql(sql, params=params) if params else con.sql(sql)
    if not session.is_admin:
        _record_owner(session, sql)
    return result


def authorize(session: Session, sql: str) -> None:
    """Check a non-administrator's plain SQL before DuckDB runs it; raise PermissionDenied if not allowed."""
    try:
        parsed = statements.parse(sql)
    except InvalidArgument as e:
        raise PermissionDenied(f"cannot check this statement, so role {session.role} may not run it: {e}") from None
    for stmt in parsed:
        acc = statements.analyze(stmt.sql(dialect=statements.DIALECT), session.schema)
        check = session.checker()
        if acc.kind not in USER_STATEMENTS:
            raise PermissionDenied(f"Insufficient privileges: {acc.kind} is for the administrator only "
                                   f"(current role: {session.role})")
        touched = acc.writes | ({acc.creates[1]} if acc.creates else set())
        if any(n.split(".", 1)[0] == catalog.SCHEMA for n in touched):
            raise PermissionDenied(f"Insufficient privileges to operate on schema '{catalog.SCHEMA}': the duckdb-ft "
                                   "catalog changes only through its functions and statements")
        check.require_read(acc.reads, acc.table_functions)
        if acc.kind in ("INSERT", "UPDATE", "DELETE"):
            for name in acc.writes:
                check.require(acc.kind, catalog.relation_kind(session.engine.cursor(), name) or "TABLE", name)
        elif acc.creates:
            kind, name = acc.creates
            check.require(f"CREATE {kind}", "SCHEMA", name.split(".", 1)[0])
        elif acc.kind in ("DROP TABLE", "DROP VIEW"):
            for name in acc.writes:
                check.require_owner(acc.kind.split()[1], name, acc.kind)


def _record_owner(session: Session, sql: str) -> None:
    for stmt in statements.parse(sql):
        acc = statements.analyze(stmt.sql(dialect=statements.DIALECT), session.schema)
        if acc.creates:
            catalog.set_owner(session.engine.cursor(), acc.creates[0], acc.creates[1], session.role)


# ------------------------------------------------------------------------------------------------ statements


def _table(rows: list[dict[str, Any]], columns: list[str]) -> pa.Table:
    def column(c: str) -> pa.Array:
        values = [r.get(c) for r in rows]
        return pa.array(values) if any(v is not None for v in values) else pa.array(values, pa.string())

    return pa.table({c: column(c) for c in columns})


def _status(message: str) -> pa.Table:
    return pa.table({"status": [message]})


def _role_must_exist(cur: Any, role: str) -> None:
    if role != access.ADMIN and not catalog.role_exists(cur, role):
        raise NotFound(f"role '{role}' does not exist: CREATE ROLE {role} first (SHOW ROLES lists them)")


def _create_role(session: Session, st: FtStatement) -> pa.Table:
    session.checker().require_admin("CREATE ROLE")
    cur = session.engine.cursor()
    if st.role == access.ADMIN or catalog.role_exists(cur, st.role):
        if st.if_exists:
            return _status(f"Role {st.role} already exists, statement succeeded.")
        raise AlreadyExists(f"role '{st.role}' already exists")
    catalog.create_role(cur, st.role)
    return _status(f"Role {st.role} successfully created.")


def _drop_role(session: Session, st: FtStatement) -> pa.Table:
    session.checker().require_admin("DROP ROLE")
    cur = session.engine.cursor()
    if st.role in (access.ADMIN, access.PUBLIC):
        raise InvalidArgument(f"role '{st.role}' is built in and cannot be dropped")
    if not catalog.role_exists(cur, st.role):
        if st.if_exists:
            return _status(f"Role {st.role} does not exist, statement succeeded.")
        _role_must_exist(cur, st.role)
    catalog.drop_role(cur, st.role)
    return _status(f"{st.role} successfully dropped.")


def _object(session: Session, st: FtStatement) -> tuple[str, str]:
    """Normalize and check the object of a GRANT/REVOKE/SHOW GRANTS: (kind, qualified name)."""
    cur = session.engine.cursor()
    kind, name = st.object_kind, st.object_name
    if kind in ("SCHEMA", "ALL TABLES"):
        if not catalog.schema_exists(cur, name):
            raise NotFound(f"schema '{name}' does not exist")
        return kind, name
    if "." not in name:
        name = f"{session.schema}.{name}"
    if kind == "MODEL":
        schema, model = name.split(".", 1)
        if catalog.get_model(cur, schema, model) is None:
            raise NotFound(f"model '{name}' does not exist (SHOW MODELS lists them)")
        return kind, name
    actual = catalog.relation_kind(cur, name)
    if actual is None:
        raise NotFound(f"{kind.lower()} '{name}' does not exist")
    return actual, name


def _grant(session: Session, st: FtStatement, revoke: bool = False) -> pa.Table:
    cur = session.engine.cursor()
    kind, name = _object(session, st)
    _role_must_exist(cur, st.role)
    allowed = OBJECT_PRIVILEGES["TABLE" if kind == "VIEW" and "OWNERSHIP" not in st.privileges else kind]
    for p in st.privileges:
        if p not in allowed:
            raise InvalidArgument(f"privilege {p} does not apply to {kind.lower()} '{name}'; "
                                  f"valid: {', '.join(sorted(allowed))}")
    check = session.checker()
    if kind in ("MODEL", "TABLE", "VIEW"):
        check.require_owner(kind, name, "REVOKE" if revoke else "GRANT")
    else:
        check.require_admin(f"{'REVOKE' if revoke else 'GRANT'} on {kind.lower()} '{name}'")
    if "OWNERSHIP" in st.privileges:
        if revoke:
            raise InvalidArgument("OWNERSHIP cannot be revoked: GRANT OWNERSHIP to another role instead")
        if kind == "MODEL":
            catalog.set_model_owner(cur, *name.split(".", 1), st.role)
        else:
            catalog.set_owner(cur, kind, name, st.role)
        return _status(f"Ownership of {kind.lower()} {name} granted to role {st.role}.")
    for p in st.privileges:
        if revoke:
            catalog.remove_grant(cur, st.role, p, kind, name)
        else:
            catalog.add_grant(cur, st.role, p, kind, name)
    verb = "revoked from" if revoke else "granted to"
    return _status(f"{', '.join(st.privileges)} on {kind.lower()} {name} {verb} role {st.role}.")


def _grant_role(session: Session, st: FtStatement, revoke: bool = False) -> pa.Table:
    session.checker().require_admin("REVOKE ROLE" if revoke else "GRANT ROLE")
    cur = session.engine.cursor()
    _role_must_exist(cur, st.role)
    if st.grantee_kind == "ROLE":
        _role_must_exist(cur, st.grantee)
        if not revoke and st.role in access.effective_roles(cur, st.role) and \
                st.grantee in access.effective_roles(cur, st.role):
            raise InvalidArgument(f"granting role {st.role} to role {st.grantee} would make a cycle")
    if revoke:
        catalog.remove_member(cur, st.role, st.grantee_kind, st.grantee)
        return _status(f"Role {st.role} revoked from {st.grantee_kind.lower()} {st.grantee}.")
    catalog.add_member(cur, st.role, st.grantee_kind, st.grantee)
    return _status(f"Role {st.role} granted to {st.grantee_kind.lower()} {st.grantee}.")


def _use_role(session: Session, st: FtStatement) -> pa.Table:
    cur = session.engine.cursor()
    _role_must_exist(cur, st.role)
    if session.user is not None and st.role not in access.user_roles(cur, session.user) + [access.PUBLIC]:
        raise PermissionDenied(f"role '{st.role}' is not granted to user {session.user}: "
                               f"GRANT ROLE {st.role} TO USER {session.user} first")
    session.role = st.role
    return _status(f"Statement executed successfully. Current role: {st.role}.")


def _show_roles(session: Session, st: FtStatement) -> pa.Table:
    rows = [{"name": access.ADMIN, "created_on": None}] + catalog.list_roles(session.engine.cursor())
    return _table(rows, ["name", "created_on"])


def _show_grants(session: Session, st: FtStatement) -> pa.Table:
    cur = session.engine.cursor()
    check = session.checker()
    rows = []
    if st.grantee_kind == "USER":
        for role, kind, member in catalog.members(cur):
            if kind == "USER" and member == st.grantee and (check.admin or role in check.roles):
                rows.append({"privilege": "USAGE", "granted_on": "ROLE", "name": role,
                             "granted_to": "USER", "grantee_name": member})
        return _table(rows, ["privilege", "granted_on", "name", "granted_to", "grantee_name"])
    target = _object(session, st) if st.object_kind else None
    for role, priv, kind, name in catalog.grants(cur):
        if st.grantee_kind == "ROLE" and role != st.grantee:
            continue
        if target and (kind, name) != target:
            continue
        if check.admin or role in check.roles:
            rows.append({"privilege": priv, "granted_on": kind, "name": name, "granted_to": "ROLE",
                         "grantee_name": role})
    for role, kind, member in catalog.members(cur):
        if kind == "ROLE" and not target and (st.grantee_kind != "ROLE" or member == st.grantee) and \
                (check.admin or member in check.roles):
            rows.append({"privilege": "USAGE", "granted_on": "ROLE", "name": role, "granted_to": "ROLE",
                         "grantee_name": member})
    if target and target[0] == "MODEL":
        owner = catalog.owner_of(cur, "MODEL", target[1])
        rows.insert(0, {"privilege": "OWNERSHIP", "granted_on": "MODEL", "name": target[1], "granted_to": "ROLE",
                        "grantee_name": owner})
    return _table(rows, ["privilege", "granted_on", "name", "granted_to", "grantee_name"])


MODEL_COLUMNS = ["schema_name", "name", "base_model", "owner", "created_on", "training_loss", "validation_loss",
                 "job_id"]


def _show_models(session: Session, st: FtStatement) -> pa.Table:
    cur = session.engine.cursor()
    check = session.checker()
    schema = st.object_name if st.object_kind == "SCHEMA" else None
    if schema and not catalog.schema_exists(cur, schema):
        raise NotFound(f"schema '{schema}' does not exist")
    rows = [m for m in catalog.list_models(cur, schema)
            if check.has("USAGE", "MODEL", f"{m['schema_name']}.{m['name']}")]
    return _table(rows, MODEL_COLUMNS)


def _model(session: Session, st: FtStatement) -> tuple[str, str, dict | None]:
    schema, name = statements.parse_model_name(st.object_name, session.schema)
    return schema, name, catalog.get_model(session.engine.cursor(), schema, name)


def _drop_model(session: Session, st: FtStatement) -> pa.Table:
    schema, name, model = _model(session, st)
    if model is None:
        if st.if_exists:
            return _status(f"Model {schema}.{name} does not exist, statement succeeded.")
        raise NotFound(f"model '{schema}.{name}' does not exist (SHOW MODELS lists them)")
    session.checker().require_owner("MODEL", f"{schema}.{name}", "DROP MODEL")
    cur = session.engine.cursor()
    catalog.drop_model(cur, schema, name)
    for role, priv, kind, obj in catalog.grants(cur):
        if kind == "MODEL" and obj == f"{schema}.{name}":
            catalog.remove_grant(cur, role, priv, kind, obj)
    return _status(f"{schema}.{name} successfully dropped.")


def _describe_model(session: Session, st: FtStatement) -> pa.Table:
    schema, name, model = _model(session, st)
    if model is None:
        raise NotFound(f"model '{schema}.{name}' does not exist (SHOW MODELS lists them)")
    session.checker().require("USAGE", "MODEL", f"{schema}.{name}")
    model = {k: v for k, v in model.items() if k != "adapter"}
    model["adapter_bytes"] = len(catalog.model_adapter(session.engine.cursor(), model["job_id"]))
    return _table([model], list(model))


HANDLERS: dict[str, Callable[[Session, FtStatement], pa.Table]] = {
    "CREATE ROLE": _create_role,
    "DROP ROLE": _drop_role,
    "GRANT": _grant,
    "REVOKE": lambda s, st: _grant(s, st, revoke=True),
    "GRANT ROLE": _grant_role,
    "REVOKE ROLE": lambda s, st: _grant_role(s, st, revoke=True),
    "USE ROLE": _use_role,
    "SHOW ROLES": _show_roles,
    "SHOW GRANTS": _show_grants,
    "SHOW MODELS": _show_models,
    "DROP MODEL": _drop_model,
    "DESCRIBE MODEL": _describe_model,
}
