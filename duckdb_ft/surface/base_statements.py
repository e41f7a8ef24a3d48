"""The statements of issue 30's governance, parsed by :mod:`.grammar`, handled here, each an entry of
:data:`.statements.STATEMENTS`: registered base models (``CREATE [OR REPLACE] BASE MODEL name FROM 'folder' |
'org/name'``, ``DROP BASE MODEL [IF EXISTS] name``, ``SHOW BASE MODELS``; the rules are
:mod:`..governance.base_models`'; ``GRANT USAGE ON BASE MODEL name TO ROLE r`` is a GRANT) and role limits
(``ALTER ROLE r SET MAX_QUEUED_JOBS = 5, ...`` / ``UNSET ...``, ``SHOW LIMITS``; the rules are
:mod:`..governance.quotas`'; ``DESCRIBE ROLE r``, every limit as it binds ``r``: :mod:`..governance.run_limits`).
"""

from __future__ import annotations

import pyarrow as pa

from ..catalog import access as accessdb
from ..errors import NotFound
from ..governance import base_models, quotas, run_limits
from ..ml.models import BUILTIN
from .engine import Session
from .grammar import FtStatement


def create(session: Session, st: FtStatement) -> pa.Table:
    message = base_models.create(session, session.engine.cursor(), st.object_name, st.source,
                                 replace=st.replace, if_not_exists=st.if_exists)
    return pa.table({"status": [message]})


def drop(session: Session, st: FtStatement) -> pa.Table:
    return pa.table({"status": [base_models.drop(session, session.engine.cursor(), st.object_name, st.if_exists)]})


def show(session: Session, st: FtStatement) -> pa.Table:
    rows = base_models.show(session, session.engine.cursor(), BUILTIN)
    return pa.table({"name": pa.array([r["name"] for r in rows], pa.string()),
                     "source": pa.array([r["source"] for r in rows], pa.string()),
                     "created_on": pa.array([r["created_on"] for r in rows], pa.int64())})


def alter_role(session: Session, st: FtStatement) -> pa.Table:
    cur = session.engine.cursor()
    session.checker().require_admin("ALTER ROLE ... SET a limit")
    if st.role != "public" and not accessdb.role_exists(cur, st.role):
        raise NotFound(f"role '{st.role}' does not exist: CREATE ROLE {st.role} first (SHOW ROLES lists them)")
    return pa.table({"status": [quotas.set_limits(session, cur, st.role, st.settings)]})


def show_limits(session: Session, st: FtStatement) -> pa.Table:
    rows = quotas.show_limits(session, session.engine.cursor())
    return pa.table({"role": pa.array([r["role"] for r in rows], pa.string()),
                     "limit": pa.array([r["limit"] for r in rows], pa.string()),
                     "value": pa.array([r["value"] for r in rows], pa.int64())})


def describe_role(session: Session, st: FtStatement) -> pa.Table:
    rows = run_limits.describe_role(session, session.engine.cursor(), st.role)
    return pa.table({"limit": pa.array([r["limit"] for r in rows], pa.string()),
                     "value": pa.array([r["value"] for r in rows], pa.int64()),
                     "set_on": pa.array([r["set_on"] for r in rows], pa.string()),
                     "bounds": pa.array([r["bounds"] for r in rows], pa.string())})
