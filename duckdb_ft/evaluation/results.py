"""Reading evaluations back: SHOW EVALUATIONS, DESCRIBE EVALUATION and the rows of ``finetune_evaluation(id)``.

An evaluation belongs to the role that ran it, as a job does: other roles (but the administrator and roles that
inherit the owner) see neither it nor its rows; for them it does not exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..catalog import evaluations as evaldb
from ..errors import InvalidArgument, NotFound
from . import shapes

if TYPE_CHECKING:
    from ..surface.engine import Engine, Session


def _visible(session: Session) -> set[str] | None:
    return None if session.is_admin else session.checker().roles


def show(engine: Engine, session: Session) -> list[dict[str, Any]]:
    roles = _visible(session)
    return [shapes.show(e) for e in evaldb.list_all(engine.cursor()) if roles is None or e["owner"] in roles]


def _get(engine: Engine, session: Session, evaluation_id: Any, action: str) -> dict[str, Any]:
    if not isinstance(evaluation_id, str) or not evaluation_id.strip():
        raise InvalidArgument(f"{action} needs an evaluation id, e.g. 'ev_...' (FROM finetune_evaluations() lists them)")
    ev = evaldb.get(engine.cursor(), evaluation_id.strip())
    roles = _visible(session)
    if ev is None or (roles is not None and ev["owner"] not in roles):
        raise NotFound(f"evaluation {evaluation_id!r} does not exist: FROM finetune_evaluations() lists yours")
    return ev


def describe(engine: Engine, session: Session, evaluation_id: Any) -> dict[str, Any]:
    return shapes.describe(_get(engine, session, evaluation_id, "finetune('DESCRIBE EVALUATION', id)"))


def rows(engine: Engine, session: Session, evaluation_id: Any) -> list[dict[str, Any]]:
    import json

    ev = _get(engine, session, evaluation_id, "finetune_evaluation(id)")
    return [shapes.row(r) for r in evaldb.rows(engine.cursor(), ev["id"], json.loads(ev["models"]))]
