"""The AISQL functions' default model, a database setting: ``SET duckdb_ft_default_model = 'ticket_router'``
(the administrator only; the model must exist), ``RESET duckdb_ft_default_model``, ``SHOW
duckdb_ft_default_model``. AI_CLASSIFY, AI_FILTER, AI_EXTRACT, AI_SENTIMENT, AI_AGG and AI_SUMMARIZE_AGG use it
when a call names no ``model``; unset, the built-in base model. The setting is a row of ``duckdb_ft.settings``,
so it travels with the database; a role still needs USAGE on the model to call it (COMPLETE's one error).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ..catalog import settings
from ..errors import NotFound
from ..governance import base_models
from ..ml.models import BUILTIN, DEFAULT_MODEL
from .engine import Engine, Session
from .grammar import FtStatement

SETTING = "duckdb_ft_default_model"


def default_model(engine: Engine) -> str:
    """The model an AISQL call without ``model`` runs on: the setting, else the built-in base model."""
    try:
        value = settings.get(engine.cursor(), SETTING)
    except Exception:  # a read-only database whose catalog predates the setting: it was never set
        value = None
    return value or DEFAULT_MODEL


def set_default(session: Session, st: FtStatement) -> pa.Table:
    session.checker().require_admin(f"SET {SETTING}")
    engine = session.engine
    engine.require_writable(f"SET {SETTING}")
    name = (st.object_name or "").strip()
    _must_exist(engine, session, name)
    settings.put(engine.cursor(), SETTING, name, session.user or session.role)
    return pa.table({"status": [f"Default model of the AISQL functions set to {name}."]})


def reset_default(session: Session, st: FtStatement) -> pa.Table:
    session.checker().require_admin(f"RESET {SETTING}")
    session.engine.require_writable(f"RESET {SETTING}")
    settings.unset(session.engine.cursor(), SETTING)
    return pa.table({"status": [f"Default model of the AISQL functions reset to {DEFAULT_MODEL}."]})


def show_default(session: Session, st: FtStatement) -> pa.Table:
    return pa.table({SETTING: [default_model(session.engine)]})


def _must_exist(engine: Engine, session: Session, name: str) -> None:
    """A fine-tuned model (version) of the catalog, a built-in or registered base model, or a local model folder."""
    if not name:
        raise NotFound(f"{SETTING} needs a model name: SET {SETTING} = 'ticket_router'")
    cur = engine.cursor()
    if engine.find_model(name, session) is not None or name.lower() in BUILTIN:  # find_model: NotFound for m@v9
        return
    if base_models.registered(cur, name) is not None or Path(name).is_dir():
        return
    raise NotFound(f"model '{name}' does not exist: name a fine-tuned model (SHOW MODELS), a base model (SHOW "
                   f"BASE MODELS) or a model folder")
