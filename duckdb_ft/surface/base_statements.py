"""The statements of registered base models (issue 30): ``CREATE [OR REPLACE] BASE MODEL name FROM 'folder' |
'org/name'``, ``DROP BASE MODEL [IF EXISTS] name``, ``SHOW BASE MODELS``; parsed by :mod:`.grammar`, handled here
(the rules are :mod:`..governance.base_models`'). ``GRANT USAGE ON BASE MODEL name TO ROLE r`` is a GRANT.
"""

from __future__ import annotations

from typing import Callable

import pyarrow as pa

from ..governance import base_models
from ..ml.models import BUILTIN
from .engine import Session
from .grammar import FtStatement


def _create(session: Session, st: FtStatement) -> pa.Table:
    message = base_models.create(session, session.engine.cursor(), st.object_name, st.source,
                                 replace=st.replace, if_not_exists=st.if_exists)
    return pa.table({"status": [message]})


def _drop(session: Session, st: FtStatement) -> pa.Table:
    return pa.table({"status": [base_models.drop(session, session.engine.cursor(), st.object_name, st.if_exists)]})


def _show(session: Session, st: FtStatement) -> pa.Table:
    rows = base_models.show(session, session.engine.cursor(), BUILTIN)
    return pa.table({"name": pa.array([r["name"] for r in rows], pa.string()),
                     "source": pa.array([r["source"] for r in rows], pa.string()),
                     "created_on": pa.array([r["created_on"] for r in rows], pa.int64())})


HANDLERS: dict[str, Callable[[Session, FtStatement], pa.Table]] = {
    "CREATE BASE MODEL": _create, "DROP BASE MODEL": _drop, "SHOW BASE MODELS": _show}
