"""Per-role limits the administrator sets with SQL, enforced before anything is created or generated (issue 30).

``ALTER ROLE analyst SET MAX_QUEUED_JOBS = 5, MAX_COMPLETE_TOKENS_PER_DAY = 200000`` (``ALTER ROLE r UNSET
MAX_QUEUED_JOBS``; ``SHOW LIMITS``). A session is bound by the smallest value set on any of its roles (its current
role, the roles granted to it, ``public``): a limit on ``public`` is everyone's default. No limit is set unless the
administrator sets one, so an embedded single-user database works as before; the administrator has none.

Each refusal is a :class:`PermissionDenied` naming the limit, its value and what the request would need:

- ``MAX_QUEUED_JOBS``: the role's PENDING and IN_PROGRESS jobs, with the new ones (CREATE: 1, SWEEP: its size);
- ``MAX_SWEEP_JOBS``: the combinations of one SWEEP;
- ``MAX_EPOCHS``, ``MAX_SEQ_LENGTH``, ``MAX_BATCH_SIZE`` (``batch_size`` x ``gradient_accumulation_steps``):
  a job's options (CREATE, every SWEEP combination, ESTIMATE);
- ``MAX_TRAINING_ROWS``: the training rows CREATE's snapshot holds (after cleaning), checked in CREATE's
  transaction, which then rolls back (so epochs x rows is at most ``MAX_EPOCHS`` x ``MAX_TRAINING_ROWS``);
- ``MAX_TRAINED_TOKENS_PER_DAY``: the trained tokens of the role's jobs created in the last 24 hours, checked at
  CREATE and SWEEP (a job under way counts what it trained so far);
- ``MAX_COMPLETE_TOKENS``: COMPLETE's and EVALUATE's ``max_tokens`` per row (512 when the options do not say);
- ``MAX_COMPLETE_TOKENS_PER_DAY``: the role's COMPLETE, TRY_COMPLETE and EVALUATE tokens (prompt and
  completion) of the last 24 hours, from the usage history, checked before COMPLETE or EVALUATE generates.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable

from .. import catalog
from ..errors import InvalidArgument, PermissionDenied
from ..options import CompleteOptions, TrainingOptions
from .roles import ADMIN, effective_roles

if TYPE_CHECKING:
    from ..surface.engine import Session

#: Every role limit and what it bounds, for a non-administrator: one entry a limit (``ALTER ROLE`` accepts these
#: names, ``DESCRIBE ROLE`` shows each; the README's Role limits table names each, which a test checks). Where
#: each is checked: this module's functions, and :mod:`.run_limits` for a job as it runs.
LIMITS: dict[str, str] = {
    "MAX_QUEUED_JOBS": "the role's PENDING and IN_PROGRESS jobs with the new ones (CREATE, SWEEP, RESUME)",
    "MAX_SWEEP_JOBS": "the combinations of one SWEEP",
    "MAX_EPOCHS": "a job's max_epochs (CREATE, every SWEEP combination, ESTIMATE)",
    "MAX_SEQ_LENGTH": "a job's max_seq_length (CREATE, every SWEEP combination, ESTIMATE)",
    "MAX_BATCH_SIZE": "a job's batch_size x gradient_accumulation_steps (CREATE, every SWEEP combination, ESTIMATE)",
    "MAX_TRAINING_ROWS": "the training rows of CREATE's snapshot, after cleaning",
    "MAX_ROW_EPOCHS": "a job's training rows x max_epochs (a SWEEP: its largest max_epochs)",
    "MAX_TRAINED_TOKENS_PER_DAY": "tokens the role's jobs of the last 24 hours trained: CREATE, SWEEP and RESUME "
                                  "are refused there, and a running job stops",
    "MAX_JOB_SECONDS": "how long a job runs: past it, it is stopped and CANCELLED",
    "MAX_COMPLETE_TOKENS": "COMPLETE's and EVALUATE's max_tokens per row (512 when their options do not say)",
    "MAX_COMPLETE_TOKENS_PER_DAY": "the role's COMPLETE, TRY_COMPLETE and EVALUATE tokens of the last 24 hours: "
                                   "COMPLETE and EVALUATE are refused there",
}
DAY_MS = 24 * 3600 * 1000
DEFAULT_MAX_TOKENS = 512  # COMPLETE's when the options do not say (ml/complete.py)


def set_limits(session: Session, cur: Any, role: str, values: dict[str, int | None]) -> str:
    """``ALTER ROLE role SET ... / UNSET ...`` (the administrator only); None unsets."""
    session.checker().require_admin("ALTER ROLE ... SET a limit")
    for name, value in values.items():
        if name not in LIMITS:
            raise InvalidArgument(f"unknown role limit {name}: the limits are {', '.join(LIMITS)}")
        if value is not None and (not isinstance(value, int) or value < 0):
            raise InvalidArgument(f"{name} must be a whole number of at least 0, got {value!r}")
    with catalog.transaction(cur):
        for name, value in values.items():
            cur.execute(f"DELETE FROM {catalog.SCHEMA}.role_limits WHERE role = ? AND name = ?", [role, name])
            if value is not None:
                cur.execute(f"INSERT INTO {catalog.SCHEMA}.role_limits VALUES (?, ?, ?)", [role, name, value])
    return f"Limits of role {role} updated: " + ", ".join(
        f"{n} = {v}" if v is not None else f"{n} unset" for n, v in values.items()) + "."


def show_limits(session: Session, cur: Any) -> list[dict[str, Any]]:
    """The limits set on the session's roles (the administrator: on every role)."""
    rows = cur.execute(f"SELECT role, name, value FROM {catalog.SCHEMA}.role_limits ORDER BY role, name").fetchall()
    mine = None if session.is_admin else effective_roles(cur, session.role)
    return [{"role": r, "limit": n, "value": v} for r, n, v in rows if mine is None or r in mine]


def limits_of(session: Session, cur: Any) -> dict[str, int]:
    """The limits binding this session: per limit, the smallest value set on any of its roles."""
    return role_limits(cur, session.role)


def role_limits(cur: Any, role: str) -> dict[str, int]:
    """The limits binding ``role`` (a session's current role, a job's owner): the smallest value set on any of
    the roles it has; none for the administrator."""
    if role == ADMIN:
        return {}
    try:
        rows = cur.execute(f"SELECT role, name, value FROM {catalog.SCHEMA}.role_limits").fetchall()
    except Exception:  # a catalog without the table (read-only, outdated): no limits
        return {}
    roles = effective_roles(cur, role)
    out: dict[str, int] = {}
    for holder, name, value in rows:
        if holder in roles:
            out[name] = min(value, out.get(name, value))
    return out


def _refuse(session: Session, name: str, value: int, need: str) -> PermissionDenied:
    return PermissionDenied.of(name, role=session.role, reason=f"role limit {name} is {value}, and this needs {need}",
                               hint="SHOW LIMITS lists them, the administrator sets them with ALTER ROLE")


def check_job(session: Session, cur: Any, opts: TrainingOptions, new_jobs: int = 1) -> None:
    """A job's options, and (``new_jobs`` > 0) the queue and the day's trained tokens, against the limits."""
    limits = limits_of(session, cur)
    if not limits:
        return
    for name, need in (("MAX_EPOCHS", opts.max_epochs), ("MAX_SEQ_LENGTH", opts.max_seq_length),
                       ("MAX_BATCH_SIZE", opts.batch_size * opts.gradient_accumulation_steps)):
        if name in limits and need > limits[name]:
            raise _refuse(session, name, limits[name], f"{need} ({name.lower()[4:]} of the options)")
    if new_jobs <= 0:
        return
    if "MAX_QUEUED_JOBS" in limits:
        queued = catalog.one(cur, f"SELECT count(*) FROM {catalog.SCHEMA}.jobs WHERE owner = ? AND status IN "
                                  "('PENDING', 'IN_PROGRESS')", [session.role])[0]
        if queued + new_jobs > limits["MAX_QUEUED_JOBS"]:
            raise _refuse(session, "MAX_QUEUED_JOBS", limits["MAX_QUEUED_JOBS"],
                          f"{queued + new_jobs} queued or running jobs ({queued} now, {new_jobs} new)")
    if "MAX_TRAINED_TOKENS_PER_DAY" in limits:
        day = trained_today(cur, session.role)
        if day >= limits["MAX_TRAINED_TOKENS_PER_DAY"]:
            raise _refuse(session, "MAX_TRAINED_TOKENS_PER_DAY", limits["MAX_TRAINED_TOKENS_PER_DAY"],
                          f"more: {day} tokens trained by this role's jobs of the last 24 hours")


def check_rows(session: Session, cur: Any, job_id: str) -> None:
    """The rows of a job's snapshot (inside CREATE's transaction) against ``MAX_TRAINING_ROWS``."""
    limits = limits_of(session, cur)
    if "MAX_TRAINING_ROWS" in limits:
        rows = catalog.one(cur, f"SELECT coalesce(train_rows, 0) FROM {catalog.SCHEMA}.jobs WHERE id = ?",
                           [job_id])[0]
        if rows > limits["MAX_TRAINING_ROWS"]:
            raise _refuse(session, "MAX_TRAINING_ROWS", limits["MAX_TRAINING_ROWS"],
                          f"{rows} training rows (the training query's, after cleaning)")


def trained_today(cur: Any, role: str) -> int:
    """Tokens trained by ``role``'s jobs created in the last 24 hours (a running job's progress included)."""
    return catalog.one(cur, f"SELECT coalesce(sum(trained_tokens), 0) FROM {catalog.SCHEMA}.jobs "
                            "WHERE owner = ? AND created_on >= ?", [role, catalog.now_ms() - DAY_MS])[0]


def check_sweep(session: Session, cur: Any, jobs: int) -> None:
    """A SWEEP's size and the queue it would fill."""
    limits = limits_of(session, cur)
    if "MAX_SWEEP_JOBS" in limits and jobs > limits["MAX_SWEEP_JOBS"]:
        raise _refuse(session, "MAX_SWEEP_JOBS", limits["MAX_SWEEP_JOBS"], f"{jobs} jobs (its combinations)")


def check_complete(session: Session, cur: Any, options: Iterable[str | None] | None) -> None:
    """COMPLETE's ``max_tokens`` per row and the role's tokens of the day, before anything generates."""
    limits = limits_of(session, cur)
    if not limits:
        return
    if "MAX_COMPLETE_TOKENS" in limits:
        for text in set(options) if options is not None else {None}:
            try:
                wanted = CompleteOptions.parse(text).max_tokens or DEFAULT_MAX_TOKENS
            except (InvalidArgument, json.JSONDecodeError, TypeError):
                continue  # COMPLETE's own error (or TRY_COMPLETE's NULL) for bad options
            if wanted > limits["MAX_COMPLETE_TOKENS"]:
                raise _refuse(session, "MAX_COMPLETE_TOKENS", limits["MAX_COMPLETE_TOKENS"],
                              f"max_tokens {wanted} (pass options with a smaller max_tokens)")
    if "MAX_COMPLETE_TOKENS_PER_DAY" in limits:
        day = catalog.one(cur, f"SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM "
                               f"{catalog.SCHEMA}.usage WHERE role = ? AND start_ms >= ?",
                          [session.role, catalog.now_ms() - DAY_MS])[0]
        if day >= limits["MAX_COMPLETE_TOKENS_PER_DAY"]:
            raise _refuse(session, "MAX_COMPLETE_TOKENS_PER_DAY", limits["MAX_COMPLETE_TOKENS_PER_DAY"],
                          f"more: {day} tokens generated or read for this role in the last 24 hours")
