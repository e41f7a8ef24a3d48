"""The role limits on what one job costs as it runs (issue 30 item 3), beside :mod:`.quotas`' limits on requests.

- ``MAX_JOB_SECONDS``: a job of the role that has been running (IN_PROGRESS) that long is stopped at its next
  step and CANCELLED, its error naming the limit (:class:`Deadline`, which the worker asks between steps);
- ``MAX_TRAINED_TOKENS_PER_DAY``, checked at CREATE by :mod:`.quotas`, also stops a running job of the role (as
  ``MAX_JOB_SECONDS`` does) once the role's jobs of the last 24 hours, this one's progress included, trained that
  many tokens: one job cannot spend a day's budget many times over;
- ``MAX_ROW_EPOCHS``: training rows x ``max_epochs`` (a SWEEP: its largest ``max_epochs``), the rows a job may
  train on, counted with repeats; checked in CREATE's transaction, before it commits, so a refusal leaves nothing
  (``MAX_TRAINING_ROWS`` and ``MAX_EPOCHS`` bound each factor alone);
- RESUME queues a job again: ``MAX_QUEUED_JOBS`` and ``MAX_TRAINED_TOKENS_PER_DAY`` hold there as at CREATE.

A job's limits are its owner's (the role that created it), read when it starts; the administrator's have none.
``DESCRIBE ROLE r`` (:func:`describe_role`) shows every limit as it binds ``r``, and the role it is set on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import catalog
from ..catalog import access as accessdb
from ..errors import NotFound
from ..options import TrainingOptions
from . import quotas
from .roles import ADMIN, PUBLIC, effective_roles

if TYPE_CHECKING:
    from ..surface.engine import Session


class Deadline:
    """When a running job must stop: ``MAX_JOB_SECONDS`` after it started on the worker, or once its role's
    trained tokens of the day reach ``MAX_TRAINED_TOKENS_PER_DAY`` (read from the catalog at most once a
    second). Never, without those limits."""

    TOKENS_EVERY = 1.0  # seconds between two reads of the day's trained tokens

    def __init__(self, cur: Any, owner: str, limits: dict[str, int]):
        self.cur, self.owner, self.why = cur, owner, ""
        self.limit = limits.get("MAX_JOB_SECONDS")
        self.tokens = limits.get("MAX_TRAINED_TOKENS_PER_DAY")
        self.ends = None if self.limit is None else time.monotonic() + self.limit
        self._read = 0.0

    @classmethod
    def of(cls, cur: Any, owner: str) -> "Deadline":
        """The deadline of a job of ``owner`` starting now (its limits read from the catalog)."""
        return cls(cur, owner, quotas.role_limits(cur, owner))

    def passed(self) -> bool:
        if self.why:
            return True
        now = time.monotonic()
        if self.ends is not None and now >= self.ends:
            self.why = f"MAX_JOB_SECONDS: a job of role {self.owner} may run {self.limit} s, and this one ran that long"
        elif self.tokens is not None and now - self._read >= self.TOKENS_EVERY:
            self._read = now
            day = quotas.trained_today(self.cur, self.owner)
            if day >= self.tokens:
                self.why = (f"MAX_TRAINED_TOKENS_PER_DAY: role {self.owner} may train {self.tokens} tokens a day, "
                            f"and its jobs of the last 24 hours trained {day}")
        return bool(self.why)

    def error(self) -> str:
        return (f"stopped by role limit {self.why} (SHOW LIMITS lists the limits; the administrator sets them with "
                "ALTER ROLE)")


def check_row_epochs(session: Session, cur: Any, train_rows: int, max_epochs: int) -> None:
    """A CREATE's training rows, once copied and cleaned (its transaction not yet committed), x ``max_epochs``
    against MAX_ROW_EPOCHS."""
    limits = quotas.limits_of(session, cur)
    if "MAX_ROW_EPOCHS" in limits and train_rows * max_epochs > limits["MAX_ROW_EPOCHS"]:
        raise quotas._refuse(session, "MAX_ROW_EPOCHS", limits["MAX_ROW_EPOCHS"],
                             f"{train_rows * max_epochs} ({train_rows} training rows x max_epochs {max_epochs})")


def check_resume(session: Session | None, cur: Any, job: dict[str, Any]) -> None:
    """RESUME queues the job again: the queue and the day's trained tokens, as at CREATE (its options were
    checked then, and are again: the limits may have changed since)."""
    if session is None:  # the package resuming jobs its process left (resume_stopped): nothing new is asked
        return
    quotas.check_job(session, cur, TrainingOptions.from_json(job["options"]), 1)


def describe_role(session: Session, cur: Any, role: str) -> list[dict[str, Any]]:
    """Every limit as it binds ``role``: its value (None: no limit), the role it is set on (the smallest value
    among the role's own roles) and what it bounds. The administrator describes any role, another role only the
    roles it has."""
    mine = None if session.is_admin else effective_roles(cur, session.role)
    exists = role in (ADMIN, PUBLIC) or accessdb.role_exists(cur, role)
    if not exists or (mine is not None and role not in mine):
        raise NotFound(f"role '{role}' does not exist or is not one of the current role's roles "
                       f"(current role: {session.role}; SHOW ROLES lists them)")
    binding: dict[str, tuple[int, str]] = {}
    if role != ADMIN:
        roles = effective_roles(cur, role)
        rows = cur.execute(f"SELECT role, name, value FROM {catalog.SCHEMA}.role_limits ORDER BY role").fetchall()
        for holder, name, value in rows:
            if holder in roles and (name not in binding or value < binding[name][0]):
                binding[name] = (value, holder)
    return [{"limit": n, "value": binding.get(n, (None, None))[0], "set_on": binding.get(n, (None, None))[1],
             "bounds": bounds} for n, bounds in quotas.LIMITS.items()]
