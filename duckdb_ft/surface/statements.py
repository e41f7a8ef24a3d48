"""duckdb-ft's own statements, one handler each: roles, grants, models and their versions. Each checks the caller's privileges, changes
the catalog, and answers with a small table (pyarrow), as Snowflake answers the same statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from ..catalog import access as accessdb, models as modeldb, objects
from ..errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from ..governance import base_models, roles, sequences
from ..ml.models import BUILTIN
from ..queries import parse_model_name
from .engine import Session
from . import base_statements, default_model, grammar, usage, user_statements
from .grammar import FtStatement


def _table(rows: list[dict[str, Any]], columns: list[str]) -> pa.Table:
    def column(c: str) -> pa.Array:
        values = [r.get(c) for r in rows]
        return pa.array(values) if any(v is not None for v in values) else pa.array(values, pa.string())

    return pa.table({c: column(c) for c in columns})


def _status(message: str) -> pa.Table:
    return pa.table({"status": [message]})


def _role_must_exist(cur: Any, role: str) -> None:
    if role != roles.ADMIN and not accessdb.role_exists(cur, role):
        raise NotFound(f"role '{role}' does not exist: CREATE ROLE {role} first (SHOW ROLES lists them)")


def _create_role(session: Session, st: FtStatement) -> pa.Table:
    session.checker().require_admin("CREATE ROLE")
    cur = session.engine.cursor()
    if st.role == roles.ADMIN or accessdb.role_exists(cur, st.role):
        if st.if_exists:
            return _status(f"Role {st.role} already exists, statement succeeded.")
        raise AlreadyExists(f"role '{st.role}' already exists")
    accessdb.create_role(cur, st.role)
    return _status(f"Role {st.role} successfully created.")


def _drop_role(session: Session, st: FtStatement) -> pa.Table:
    session.checker().require_admin("DROP ROLE")
    cur = session.engine.cursor()
    if st.role in (roles.ADMIN, roles.PUBLIC):
        raise InvalidArgument(f"role '{st.role}' is built in and cannot be dropped")
    if not accessdb.role_exists(cur, st.role):
        if st.if_exists:
            return _status(f"Role {st.role} does not exist, statement succeeded.")
        _role_must_exist(cur, st.role)
    accessdb.drop_role(cur, st.role)
    return _status(f"{st.role} successfully dropped.")


def _object(session: Session, st: FtStatement) -> tuple[str, str]:
    """Normalize and check the object of a GRANT/REVOKE/SHOW GRANTS: (kind, qualified name)."""
    cur = session.engine.cursor()
    kind, name = st.object_kind, st.object_name
    if kind in ("SCHEMA", "ALL TABLES"):
        if not objects.schema_exists(cur, name):
            raise NotFound(f"schema '{name}' does not exist")
        return kind, name
    if kind == "BASE MODEL":
        session.checker().require_admin("grants on base models")
        if base_models.registered(cur, name) is None:
            raise NotFound(f"base model '{name}' does not exist: CREATE BASE MODEL {name} FROM '...' first")
        return kind, name.lower()
    if kind == "SEQUENCE":
        session.checker().require_admin("grants on sequences")
        found = sequences.lookup(cur, name, session.schema)
        if found is None:
            raise NotFound(f"sequence '{name}' does not exist in this database")
        return kind, found
    if "." not in name:
        name = f"{session.schema}.{name}"
    if kind == "MODEL":
        schema, model = name.split(".", 1)
        if modeldb.get_model(cur, schema, model) is None or not session.checker().has("USAGE", "MODEL", name):
            _no_such_model(session, name, "OWNERSHIP" if st.kind in ("GRANT", "REVOKE") else "USAGE")
        return kind, name
    actual = objects.relation_kind(cur, name)
    if actual is None:
        raise NotFound(f"{kind.lower()} '{name}' does not exist")
    return actual, name


def _no_such_model(session: Session, name: str, need: str = "USAGE") -> None:
    """A model the role may not use is told apart from none at all only to the administrator."""
    if session.is_admin:
        raise NotFound(f"model '{name}' does not exist (SHOW MODELS lists them)")
    raise PermissionDenied.of(need, "MODEL", name, session.role, reason=f"it does not exist or {need} is required",
                              hint="SHOW MODELS lists the models you may use")


def _grant(session: Session, st: FtStatement, revoke: bool = False) -> pa.Table:
    cur = session.engine.cursor()
    kind, name = _object(session, st)
    _role_must_exist(cur, st.role)
    allowed = roles.applicable("TABLE" if kind == "VIEW" and "OWNERSHIP" not in st.privileges else kind)
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
            modeldb.set_model_owner(cur, *name.split(".", 1), st.role)
        else:
            accessdb.set_owner(cur, kind, name, st.role)
        return _status(f"Ownership of {kind.lower()} {name} granted to role {st.role}.")
    for p in st.privileges:
        if revoke:
            accessdb.remove_grant(cur, st.role, p, kind, name)
        else:
            accessdb.add_grant(cur, st.role, p, kind, name)
    verb = "revoked from" if revoke else "granted to"
    return _status(f"{', '.join(st.privileges)} on {kind.lower()} {name} {verb} role {st.role}.")


def _grant_role(session: Session, st: FtStatement, revoke: bool = False) -> pa.Table:
    session.checker().require_admin("REVOKE ROLE" if revoke else "GRANT ROLE")
    cur = session.engine.cursor()
    _role_must_exist(cur, st.role)
    if st.grantee_kind == "ROLE":
        _role_must_exist(cur, st.grantee)
        if not revoke and st.grantee in roles.effective_roles(cur, st.role):  # the role already has the grantee's
            raise InvalidArgument(f"granting role {st.role} to role {st.grantee} would make a cycle")
    if revoke:
        accessdb.remove_member(cur, st.role, st.grantee_kind, st.grantee)
        return _status(f"Role {st.role} revoked from {st.grantee_kind.lower()} {st.grantee}.")
    accessdb.add_member(cur, st.role, st.grantee_kind, st.grantee)
    return _status(f"Role {st.role} granted to {st.grantee_kind.lower()} {st.grantee}.")


def _use_role(session: Session, st: FtStatement) -> pa.Table:
    cur = session.engine.cursor()
    _role_must_exist(cur, st.role)
    if session.role_restriction is not None and st.role != session.role_restriction:
        raise PermissionDenied(f"this session's access token is restricted to role {session.role_restriction}: "
                               "use a token of the role you need")
    if session.user is not None and st.role not in roles.user_roles(cur, session.user) + [roles.PUBLIC]:
        raise PermissionDenied(f"role '{st.role}' is not granted to user {session.user}: "
                               f"GRANT ROLE {st.role} TO USER {session.user} first")
    session.role = st.role
    return _status(f"Statement executed successfully. Current role: {st.role}.")


def _show_roles(session: Session, st: FtStatement) -> pa.Table:
    rows = [{"name": roles.ADMIN, "created_on": None}] + accessdb.list_roles(session.engine.cursor())
    return _table(rows, ["name", "created_on"])


def _show_grants(session: Session, st: FtStatement) -> pa.Table:
    cur = session.engine.cursor()
    check = session.checker()
    rows = []
    if st.grantee_kind == "USER":
        for role, kind, member in accessdb.members(cur):
            if kind == "USER" and member == st.grantee and (check.admin or role in check.roles):
                rows.append({"privilege": "USAGE", "granted_on": "ROLE", "name": role,
                             "granted_to": "USER", "grantee_name": member})
        return _table(rows, ["privilege", "granted_on", "name", "granted_to", "grantee_name"])
    target = _object(session, st) if st.object_kind else None
    for role, priv, kind, name in accessdb.grants(cur):
        if st.grantee_kind == "ROLE" and role != st.grantee:
            continue
        if target and (kind, name) != target:
            continue
        if check.admin or role in check.roles:
            rows.append({"privilege": priv, "granted_on": kind, "name": name, "granted_to": "ROLE",
                         "grantee_name": role})
    for role, kind, member in accessdb.members(cur):
        if kind == "ROLE" and not target and (st.grantee_kind != "ROLE" or member == st.grantee) and \
                (check.admin or member in check.roles):
            rows.append({"privilege": "USAGE", "granted_on": "ROLE", "name": role, "granted_to": "ROLE",
                         "grantee_name": member})
    if target and target[0] == "MODEL":
        owner = accessdb.owner_of(cur, "MODEL", target[1])
        rows.insert(0, {"privilege": "OWNERSHIP", "granted_on": "MODEL", "name": target[1], "granted_to": "ROLE",
                        "grantee_name": owner})
    return _table(rows, ["privilege", "granted_on", "name", "granted_to", "grantee_name"])


MODEL_COLUMNS = ["schema_name", "name", "default_version", "versions", "base_model", "owner", "created_on",
                 "training_loss", "validation_loss", "job_id"]
VERSION_COLUMNS = ["created_on", "name", "is_default_version", "parent_model", "snapshot_rows", "training_loss",
                   "validation_loss", "job_id", "base_model", "schema_name", "model_name", "owner"]


def _show_models(session: Session, st: FtStatement) -> pa.Table:
    session.engine.check_current()
    cur = session.engine.cursor()
    check = session.checker()
    schema = st.object_name if st.object_kind == "SCHEMA" else None
    if schema and not objects.schema_exists(cur, schema):
        raise NotFound(f"schema '{schema}' does not exist")
    rows = [m for m in modeldb.list_models(cur, schema)
            if check.has("USAGE", "MODEL", f"{m['schema_name']}.{m['name']}")]
    return _table(base_models.shown_rows(session, cur, rows, BUILTIN), MODEL_COLUMNS)


def _model(session: Session, st: FtStatement, need: str = "USAGE") -> tuple[str, str, dict]:
    """The model version a statement names (its default without a version), which the role may use; else the
    error that says what is wrong (an unknown version is told apart only to a role that may use the model)."""
    schema, name = parse_model_name(st.object_name, session.schema)
    cur = session.engine.cursor()
    full = f"{schema}.{name}"
    if not modeldb.model_exists(cur, schema, name) or not session.checker().has("USAGE", "MODEL", full):
        _no_such_model(session, full, need)
    session.engine.check_current()
    model = modeldb.get_model(cur, schema, name, st.version)
    if model is None:
        raise NotFound(f"model '{full}' has no version '{st.version}': SHOW VERSIONS IN MODEL {full} lists them")
    return schema, name, model


def _drop_model(session: Session, st: FtStatement) -> pa.Table:
    schema, name = parse_model_name(st.object_name, session.schema)
    full = f"{schema}.{name}"
    cur = session.engine.cursor()
    if st.if_exists and (not modeldb.model_exists(cur, schema, name)
                         or not session.checker().has("USAGE", "MODEL", full)
                         or (st.version and modeldb.get_model(cur, schema, name, st.version) is None)):
        hidden = "" if session.is_admin else " or not authorized"
        what = f"Version {st.version} of model {full}" if st.version else f"Model {full}"
        return _status(f"{what} does not exist{hidden}, statement succeeded.")
    schema, name, model = _model(session, st, "OWNERSHIP")
    session.checker().require_owner("MODEL", full, "DROP MODEL")
    if st.version:
        if model["is_default"]:
            others = [v["version"] for v in modeldb.list_versions(cur, schema, name) if v["version"] != st.version]
            hint = (f"ALTER MODEL {full} SET DEFAULT VERSION {others[-1]} first" if others else
                    "it is the only version")
            raise InvalidArgument(f"version {st.version} is the default version of model {full} and cannot be "
                                  f"dropped: {hint}, or DROP MODEL {full} to drop the model with every version")
        modeldb.drop_version(cur, schema, name, st.version)
        return _status(f"Version {st.version} of model {full} successfully dropped.")
    modeldb.drop_model(cur, schema, name)
    for role, priv, kind, obj in accessdb.grants(cur):
        if kind == "MODEL" and obj == full:
            accessdb.remove_grant(cur, role, priv, kind, obj)
    return _status(f"{full} successfully dropped.")


def _alter_model(session: Session, st: FtStatement) -> pa.Table:
    if st.kind == "DROP MODEL":  # ALTER MODEL m DROP VERSION v
        return _drop_model(session, st)
    schema, name, _ = _model(session, st, "OWNERSHIP")  # the version exists
    full = f"{schema}.{name}"
    session.checker().require_owner("MODEL", full, "ALTER MODEL")
    modeldb.set_default_version(session.engine.cursor(), schema, name, st.version)
    return _status(f"Default version of model {full} set to {st.version}.")


def _show_versions(session: Session, st: FtStatement) -> pa.Table:
    schema, name, _ = _model(session, st)
    rows = [{**v, "name": v["version"], "model_name": v["name"], "is_default_version": v["is_default"]}
            for v in modeldb.list_versions(session.engine.cursor(), schema, name)]
    return _table(base_models.shown_rows(session, session.engine.cursor(), rows, BUILTIN), VERSION_COLUMNS)


def _describe_model(session: Session, st: FtStatement) -> pa.Table:
    schema, name, model = _model(session, st)
    session.checker().require("USAGE", "MODEL", f"{schema}.{name}")
    first = ("schema_name", "name", "version", "is_default")
    model = {**{k: model[k] for k in first}, **{k: v for k, v in model.items() if k not in first and k != "adapter"}}
    model["adapter_bytes"] = len(modeldb.model_adapter(session.engine.cursor(), model["job_id"]))
    model = base_models.shown_rows(session, session.engine.cursor(), [model], BUILTIN)[0]  # no path to a user
    return _table([model], list(model))


@dataclass(frozen=True)
class Statement:
    """One of duckdb-ft's statements: the parser of the words after its leading ones, and its handler."""

    parse: Callable[[Any], FtStatement]
    run: Callable[[Session, FtStatement], pa.Table]


#: duckdb-ft's own statements, as sqlglot's STATEMENT_PARSERS: leading words -> parser and handler. The first entry
#: whose words lead a statement takes it (a longer head before a shorter one it starts with); anything else is
#: DuckDB's. SHOW forms are entries like any other. Adding a statement is one entry here.
STATEMENTS: dict[tuple[str, ...], Statement] = {
    ("CREATE", "ROLE"): Statement(grammar.create_role, _create_role),
    ("DROP", "ROLE"): Statement(grammar.drop_role, _drop_role),
    ("GRANT", "ROLE"): Statement(lambda t: grammar.grant_role(t, "GRANT"), _grant_role),
    ("REVOKE", "ROLE"): Statement(lambda t: grammar.grant_role(t, "REVOKE"),
                                  lambda s, st: _grant_role(s, st, revoke=True)),
    ("GRANT",): Statement(lambda t: grammar.grant(t, "GRANT"), _grant),
    ("REVOKE",): Statement(lambda t: grammar.grant(t, "REVOKE"), lambda s, st: _grant(s, st, revoke=True)),
    ("USE", "ROLE"): Statement(grammar.use_role, _use_role),
    ("SHOW", "ROLES"): Statement(lambda t: FtStatement(kind="SHOW ROLES"), _show_roles),
    ("SHOW", "GRANTS"): Statement(grammar.show_grants, _show_grants),
    ("SHOW", "MODELS"): Statement(grammar.show_models, _show_models),
    ("SHOW", "VERSIONS"): Statement(grammar.show_versions, _show_versions),
    ("SHOW", "USAGE"): Statement(lambda t: FtStatement(kind="SHOW USAGE"),
                                 lambda s, st: _table(usage.usage_rows(s.engine, s), usage.USAGE_COLUMNS)),
    ("DROP", "MODEL"): Statement(grammar.drop_model, _drop_model),
    ("ALTER", "MODEL"): Statement(grammar.alter_model, _alter_model),
    ("DESCRIBE", "MODEL"): Statement(grammar.describe_model, _describe_model),
    ("DESC", "MODEL"): Statement(grammar.describe_model, _describe_model),
    ("CREATE", "BASE", "MODEL"): Statement(lambda t: grammar.create_base_model(t, False), base_statements.create),
    ("CREATE", "OR", "REPLACE", "BASE", "MODEL"): Statement(lambda t: grammar.create_base_model(t, True),
                                                            base_statements.create),
    ("DROP", "BASE", "MODEL"): Statement(grammar.drop_base_model, base_statements.drop),
    ("SHOW", "BASE", "MODELS"): Statement(lambda t: FtStatement(kind="SHOW BASE MODELS"), base_statements.show),
    ("ALTER", "ROLE"): Statement(grammar.alter_role, base_statements.alter_role),
    ("SHOW", "LIMITS"): Statement(lambda t: FtStatement(kind="SHOW LIMITS"), base_statements.show_limits),
    ("DESCRIBE", "ROLE"): Statement(grammar.describe_role, base_statements.describe_role),
    ("DESC", "ROLE"): Statement(grammar.describe_role, base_statements.describe_role),
    ("CREATE", "USER"): Statement(user_statements.parse_create_user, user_statements.create_user),
    ("ALTER", "USER"): Statement(user_statements.parse_alter_user, user_statements.alter_user),
    ("DROP", "USER"): Statement(user_statements.parse_drop_user, user_statements.drop_user),
    ("SHOW", "USERS"): Statement(lambda t: FtStatement(kind="SHOW USERS"), user_statements.show_users),
    ("SHOW", "USER", "PROGRAMMATIC", "ACCESS", "TOKENS"): Statement(user_statements.parse_show_tokens,
                                                                    user_statements.show_tokens),
    ("SHOW", "USER", "PATS"): Statement(lambda t: user_statements.parse_show_tokens(t, "SHOW USER PATS"),
                                        user_statements.show_tokens),
    ("SET", "DUCKDB_FT_DEFAULT_MODEL"): Statement(grammar.set_default_model, default_model.set_default),
    ("RESET", "DUCKDB_FT_DEFAULT_MODEL"): Statement(lambda t: FtStatement(kind="RESET DUCKDB_FT_DEFAULT_MODEL"),
                                                    default_model.reset_default),
    ("SHOW", "DUCKDB_FT_DEFAULT_MODEL"): Statement(lambda t: FtStatement(kind="SHOW DUCKDB_FT_DEFAULT_MODEL"),
                                                   default_model.show_default),
}


def parse_ft_statement(sql: str) -> FtStatement | None:
    """Parse a duckdb-ft statement; None when the statement is not one of ours (DuckDB runs it)."""
    return grammar.parse(sql, {head: s.parse for head, s in STATEMENTS.items()})


def run(session: Session, st: FtStatement) -> pa.Table:
    """Run a parsed duckdb-ft statement with its handler."""
    return STATEMENTS[st.head].run(session, st)


def forms() -> str:
    """The statements of :data:`STATEMENTS`, for an error that lists them (``GRANT, REVOKE, CREATE ROLE, ...``)."""
    return ", ".join(dict.fromkeys(" ".join(head) for head in STATEMENTS))
