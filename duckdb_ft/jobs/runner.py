"""Fine-tuning jobs: CREATE checks everything up front, a background worker trains, the catalog records all.

Lifetimes: jobs run on one worker thread per database, one at a time (later ones wait as PENDING, and start in
turns across roles: :mod:`.fair`). When the
interpreter exits, it waits for this process's running and pending jobs (Ctrl-C stops the wait; the job is then
left resumable). A job left PENDING or IN_PROGRESS by a process that died is found when the database is next
opened and marked ERROR with the reason; ``finetune('RESUME', id)`` continues it from its last checkpoint.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import catalog
from ..catalog import jobs as jobdb, models as modeldb
from ..errors import AlreadyExists, FtError, Interrupted, JobError, NotFound, PermissionDenied
from ..governance.base_models import shown, shown_rows
from ..governance.run_limits import check_resume
from ..ml.models import BUILTIN
from . import fair, shapes
from .create import create_job
from .worker import RESUMABLE, Worker

if TYPE_CHECKING:
    from ..surface.engine import Engine, Session

DIED = "the process running this job stopped at step {step} (killed, crashed or exited)"


class JobRunner:
    """The job queue and worker thread of one database."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._queue: deque[str] = deque()
        self._cv = threading.Condition()
        self.cancels: dict[str, threading.Event] = {}
        self._running: str | None = None
        self._served: dict[str, int] = {}  # role -> when a job of it last started (jobs/fair.py)
        self.shutdown = threading.Event()
        self._create_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stop_reason = ""
        _RUNNERS.add(self)

    # ------------------------------------------------------------------------------------------------ actions

    def create(self, session: Session, name: str, base_model: str, training_query: str,
               validation_query: str | None = None, options: str | None = None,
               sweep_epochs: int | None = None) -> str:
        """Check everything, copy the data, record a PENDING job, queue it; return its id."""
        job_id = create_job(self.engine.cursor(), session, self._create_lock, name, base_model, training_query,
                            validation_query, options, sweep_epochs)
        self.submit(job_id)
        return job_id

    def describe(self, job_id: str, session: Session | None = None) -> dict[str, Any]:
        out = shapes.describe(self._get(job_id, session))
        out["base_model"] = shown(session, self.engine.cursor(), out["base_model"], BUILTIN)  # no path to a user
        return out

    def show(self, session: Session | None = None) -> list[dict[str, Any]]:
        roles = None if session is None or session.is_admin else session.checker().roles
        cur = self.engine.cursor()
        return shown_rows(session, cur, [shapes.show(j) for j in jobdb.list_jobs(cur)
                                         if roles is None or j["owner"] in roles], BUILTIN)

    def history(self, job_id: str, session: Session | None = None) -> list[dict[str, Any]]:
        self._get(job_id, session)
        return [shapes.history(m) for m in jobdb.metrics(self.engine.cursor(), job_id)]

    def _owned(self, job_id: str, session: Session, action: str) -> dict[str, Any]:
        job = self._get(job_id, session)
        if session is not None and not session.is_admin and job["owner"] not in session.checker().roles:
            raise PermissionDenied.of("OWNERSHIP", "JOB", job_id, session.role, reason=f"{action} needs OWNERSHIP",
                                      hint=f"owner: {job['owner']}")
        return job

    def cancel(self, job_id: str, session: Session | None = None) -> str:
        cur = self.engine.cursor()
        with self._cv:
            job = self._owned(job_id, session, "CANCEL")
            if job["status"] not in catalog.ACTIVE:
                raise JobError(f"job {job_id} is {job['status']}: only PENDING or IN_PROGRESS jobs can be cancelled")
            if self._running == job_id:
                self.cancels.setdefault(job_id, threading.Event()).set()
            else:
                if job_id in self._queue:
                    self._queue.remove(job_id)
                jobdb.update_job(cur, job_id, status="CANCELLED", finished_on=catalog.now_ms())
                self._cv.notify_all()
        return f"Canceled fine-tuning job: {job_id}"

    def resume(self, job_id: str, session: Session | None = None) -> str:
        """Queue an ERROR job again; it continues from its last checkpoint, if it has one."""
        cur = self.engine.cursor()
        with self._cv:
            job = self._owned(job_id, session, "RESUME")
            if job["status"] != "ERROR":
                raise JobError(f"job {job_id} is {job['status']}: only a job in ERROR can be resumed")
            check_resume(session, cur, job)  # the role's queue and day's tokens (ALTER ROLE ... SET)
            with self._create_lock:
                version = job.get("model_version") or "v1"
                if version in modeldb.version_labels(cur, job["schema_name"], job["model_name"]):
                    raise AlreadyExists(f"model '{job['schema_name']}.{job['model_name']}' version {version} has been "
                                        "created since: drop that model (or version) first")
                jobdb.update_job(cur, job_id, status="PENDING", error=None, finished_on=None)
        self.submit(job_id)
        return f"Resumed fine-tuning job: {job_id}"

    def wait(self, job_id: str, timeout: float | None = None, interrupted: threading.Event | None = None) -> str:
        """Block until the job is no longer PENDING or IN_PROGRESS (or ``timeout`` seconds); return its status.

        ``interrupted`` (the caller's session event) stops the wait within 0.2 s with :class:`Interrupted`; the job
        itself goes on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while True:
                if interrupted is not None and interrupted.is_set():
                    raise Interrupted(f"finetune('WAIT', '{job_id}') was interrupted; the job goes on: "
                                      f"finetune('DESCRIBE', '{job_id}') shows it, finetune('CANCEL', ...) stops it")
                status = self._get(job_id)["status"]
                if status not in catalog.ACTIVE:
                    return status
                if job_id not in self._queue and self._running != job_id:
                    return status  # active in another process, or found stale: nothing here will change it
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return status
                self._cv.wait(timeout=0.2 if left is None else min(left, 0.2))

    def _get(self, job_id: str, session: Session | None = None) -> dict[str, Any]:
        job = jobdb.get_job(self.engine.cursor(), job_id) if isinstance(job_id, str) else None
        if job is not None and session is not None and not session.is_admin:
            check = session.checker()
            if job["owner"] not in check.roles:
                job = None  # as Snowflake: a job you may not see does not exist for you
        if job is None:
            raise NotFound(f"fine-tuning job {job_id!r} does not exist: finetune('SHOW') lists the jobs")
        return job

    # --------------------------------------------------------------------------------------------- lifecycle

    def recover(self) -> list[str]:
        """Jobs left active by a process that is gone become ERROR, resumable. Returns their ids."""
        cur = self.engine.cursor()
        found = []
        for job in jobdb.list_jobs(cur, catalog.ACTIVE):
            reason = DIED.format(step=job["step"] or 0) + f"; {RESUMABLE} continues it"
            if job["status"] == "PENDING":
                reason = f"the process that created this job stopped before it started; {RESUMABLE} runs it"
            jobdb.update_job(cur, job["id"], status="ERROR", error=reason, finished_on=catalog.now_ms())
            found.append(job["id"])
        return found

    def resume_stopped(self) -> list[str]:
        """Resume every job that stopped unfinished (its process died or closed the database), oldest first, whoever
        marked it ERROR: another open of the database may have recovered it before this one. Returns their ids; a
        job that cannot go on (its model name taken since) stays ERROR with its reason."""
        resumed = []
        for job in jobdb.list_jobs(self.engine.cursor(), ["ERROR"]):
            if RESUMABLE in (job["error"] or ""):
                try:
                    self.resume(job["id"])
                except FtError:
                    continue
                resumed.append(job["id"])
        return resumed

    def submit(self, job_id: str) -> None:
        with self._cv:
            self._queue.append(job_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="duckdb-ft-worker", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _owner(self, job_id: str) -> str | None:
        job = jobdb.get_job(self.engine.cursor(), job_id)
        return job["owner"] if job else None

    def active(self) -> list[str]:
        with self._cv:
            return ([self._running] if self._running else []) + list(self._queue)

    def stop(self, reason: str = "its process exited", timeout: float | None = 60) -> None:
        """Stop the worker at the next step; the running job is checkpointed and left resumable (ERROR)."""
        self.stop_reason = reason
        self.shutdown.set()
        with self._cv:
            self._cv.notify_all()
        if timeout and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self.shutdown.is_set():
                    self._cv.wait()
                if self.shutdown.is_set():
                    return
                job_id = fair.take(self._queue, self._owner, self._served)  # roles take turns
                job = jobdb.get_job(self.engine.cursor(), job_id)
                if job is None or job["status"] != "PENDING":
                    continue
                self._running = job_id
                self.cancels.setdefault(job_id, threading.Event())
                jobdb.update_job(self.engine.cursor(), job_id, status="IN_PROGRESS", started_on=catalog.now_ms())
            try:
                Worker(self, job).run()
            finally:
                with self._cv:
                    self._running = None
                    self.cancels.pop(job_id, None)
                    self._cv.notify_all()


_RUNNERS: "weakref.WeakSet[JobRunner]" = weakref.WeakSet()


def _wait_at_exit() -> None:
    """A script that creates a job and ends waits for it, so no job is lost silently."""
    runners = [r for r in list(_RUNNERS) if not r.shutdown.is_set() and r.active()]  # closed: nothing to wait for
    if not runners:
        return
    ids = [j for r in runners for j in r.active()]
    print(f"duckdb-ft: waiting for {len(ids)} fine-tuning job(s) to finish: {', '.join(ids)} "
          "(Ctrl-C stops; finetune('RESUME', id) continues later)", file=sys.stderr)
    try:
        for r in runners:
            for j in r.active():
                r.wait(j)
    except KeyboardInterrupt:
        for r in runners:
            r.stop("its process was interrupted at exit")
    except Exception as e:  # the database went away meanwhile: say so in one line, no traceback at exit
        print(f"duckdb-ft: stopped waiting for the jobs: {str(e).splitlines()[0]}", file=sys.stderr)


# Wait before the interpreter starts shutting threads down: concurrent.futures refuses new work once its own
# exit hook has run (model loading uses a thread pool), and threading's exit hooks run in reverse order of
# registration, so registering after importing concurrent.futures puts this wait first. Plain atexit runs too late.
import concurrent.futures.thread  # noqa: E402,F401  (must be imported before registering)

if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_wait_at_exit)
else:  # pragma: no cover
    atexit.register(_wait_at_exit)
