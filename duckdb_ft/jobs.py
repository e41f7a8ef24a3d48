"""Fine-tuning jobs: CREATE checks everything up front, a background worker trains, the catalog records all.

Lifetimes: jobs run on one worker thread per database, one at a time (later ones wait as PENDING). When the
interpreter exits, it waits for this process's running and pending jobs (Ctrl-C stops the wait; the job is then
left resumable). A job left PENDING or IN_PROGRESS by a process that died is found when the database is next
opened and marked ERROR with the reason; ``finetune('RESUME', id)`` continues it from its last checkpoint.
"""

from __future__ import annotations

import atexit
import json
import math
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from typing import Any

from . import catalog, data, models, statements, training
from .errors import AlreadyExists, FtError, Interrupted, InvalidArgument, JobError, NotFound, PermissionDenied
from .settings import TrainingOptions

MIN_ROWS_FOR_SPLIT = 10
FLUSH_SECONDS = 1.0  # metrics and progress reach the catalog at least this often (and at every evaluation)
DIED = "the process running this job stopped at step {step} (killed, crashed or exited)"
RESUMABLE = "finetune('RESUME', id)"  # in the error of every job that stopped unfinished and can go on


class JobRunner:
    """The job queue and worker thread of one database."""

    def __init__(self, engine: Any):
        self.engine = engine
        self._queue: deque[str] = deque()
        self._cv = threading.Condition()
        self._cancel: dict[str, threading.Event] = {}
        self._running: str | None = None
        self._shutdown = threading.Event()
        self._create_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stop_reason = ""
        _RUNNERS.add(self)

    # ------------------------------------------------------------------------------------------------ actions

    def create(self, session: Any, name: str, base_model: str, training_query: str,
               validation_query: str | None = None, options: str | None = None) -> str:
        """Check everything, copy the data, record a PENDING job, queue it; return its id."""
        schema, model_name = statements.parse_model_name(name, session.schema)
        owner = session.role
        opts = TrainingOptions.parse(options)
        base_path = self._check_base_model(base_model)
        train_q = statements.check_query(training_query, "training query")
        val_q = statements.check_query(validation_query, "validation query") if validation_query else None
        cur = self.engine.cursor()
        if not catalog.schema_exists(cur, schema):
            raise NotFound(f"schema '{schema}' does not exist: CREATE SCHEMA {schema} first")
        check = session.checker()
        check.require("CREATE MODEL", "SCHEMA", schema)
        for q in (train_q, val_q):
            if q:
                tables, functions = statements.tables_read(statements.parse(q)[0], session.schema)
                check.require_read(tables, functions)
        data.check_columns(cur, train_q, "training query")
        if val_q:
            data.check_columns(cur, val_q, "validation query")
        job_id = f"ft_{uuid.uuid4()}"
        with self._create_lock:
            holder = catalog.name_in_use(cur, schema, model_name)
            if holder:
                what = "a model" if holder == "model" else f"job {holder}, which is creating it,"
                raise AlreadyExists(f"model name '{schema}.{model_name}' is taken by {what}: choose another name "
                                    f"or DROP MODEL {schema}.{model_name}")
            cur.execute("BEGIN TRANSACTION")
            try:
                catalog.insert_job(cur, {
                    "id": job_id, "schema_name": schema, "model_name": model_name, "base_model": base_model,
                    "training_query": train_q, "validation_query": val_q, "options": opts.to_json(),
                    "owner": owner, "status": "PENDING", "progress": 0.0, "created_on": catalog.now_ms(),
                })
                holdout = 0 if val_q else int(round(opts.validation_fraction * 100))
                skipped = catalog.snapshot_rows(cur, job_id, train_q, "train", holdout)["skipped"]
                if val_q:
                    skipped += catalog.snapshot_rows(cur, job_id, val_q, "validation")["skipped"]
                counts = catalog.count_rows(cur, job_id)
                source = "validation query" if val_q else "held-out training rows"
                if not val_q and (sum(counts.values()) < MIN_ROWS_FOR_SPLIT or not counts.get("validation")
                                  or not counts.get("train")):
                    catalog.move_all_rows(cur, job_id, "validation", "train")
                    counts = catalog.count_rows(cur, job_id)
                    source = "training rows (too few rows to hold some out)"
                if not counts.get("train"):
                    raise InvalidArgument(
                        f"the training query returned no row with both prompt and completion non-NULL "
                        f"({skipped} rows skipped): check its WHERE clause and the NULLs in your columns")
                catalog.update_job(cur, job_id, train_rows=counts.get("train", 0),
                                   validation_rows=counts.get("validation", 0), validation_source=source,
                                   skipped_rows=skipped)
                cur.execute("COMMIT")
            except BaseException as e:
                cur.execute("ROLLBACK")
                if isinstance(e, FtError):
                    raise
                raise InvalidArgument(f"reading the training data failed: {str(e).splitlines()[0]}") from None
        self.submit(job_id)
        return job_id

    def _check_base_model(self, base_model: str) -> str:
        if not isinstance(base_model, str) or not base_model.strip():
            raise InvalidArgument("the base model is empty: pass one, e.g. 'smollm2-135m'")
        path = models.resolve(base_model)
        tokenizer = models.load_tokenizer(path)
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidArgument(f"base model '{base_model}' has no chat template: use an instruct/chat model")
        return path

    def describe(self, job_id: str, session: Any = None) -> dict[str, Any]:
        return _describe(self._get(job_id, session))

    def show(self, session: Any = None) -> list[dict[str, Any]]:
        roles = None if session is None or session.is_admin else session.checker().roles
        return [{"id": j["id"], "status": j["status"], "base_model": j["base_model"], "created_on": j["created_on"]}
                for j in catalog.list_jobs(self.engine.cursor()) if roles is None or j["owner"] in roles]

    def history(self, job_id: str, session: Any = None) -> list[dict[str, Any]]:
        self._get(job_id, session)
        return catalog.metrics(self.engine.cursor(), job_id)

    def _owned(self, job_id: str, session: Any, action: str) -> dict[str, Any]:
        job = self._get(job_id, session)
        if session is not None and not session.is_admin and job["owner"] not in session.checker().roles:
            raise PermissionDenied(f"Insufficient privileges to operate on job {job_id}: {action} needs "
                                   f"OWNERSHIP (owner: {job['owner']}, current role: {session.role})")
        return job

    def cancel(self, job_id: str, session: Any = None) -> str:
        cur = self.engine.cursor()
        with self._cv:
            job = self._owned(job_id, session, "CANCEL")
            if job["status"] not in catalog.ACTIVE:
                raise JobError(f"job {job_id} is {job['status']}: only PENDING or IN_PROGRESS jobs can be cancelled")
            if self._running == job_id:
                self._cancel.setdefault(job_id, threading.Event()).set()
            else:
                if job_id in self._queue:
                    self._queue.remove(job_id)
                catalog.update_job(cur, job_id, status="CANCELLED", finished_on=catalog.now_ms())
                self._cv.notify_all()
        return f"Canceled fine-tuning job: {job_id}"

    def resume(self, job_id: str, session: Any = None) -> str:
        """Queue an ERROR job again; it continues from its last checkpoint, if it has one."""
        cur = self.engine.cursor()
        with self._cv:
            job = self._owned(job_id, session, "RESUME")
            if job["status"] != "ERROR":
                raise JobError(f"job {job_id} is {job['status']}: only a job in ERROR can be resumed")
            with self._create_lock:
                holder = catalog.name_in_use(cur, job["schema_name"], job["model_name"])
                if holder:
                    raise AlreadyExists(f"model name '{job['schema_name']}.{job['model_name']}' has been taken "
                                        "since: drop that model first")
                catalog.update_job(cur, job_id, status="PENDING", error=None, finished_on=None)
        self.submit(job_id)
        return f"Resumed fine-tuning job: {job_id}"

    def wait(self, job_id: str, timeout: float | None = None, interrupted: threading.Event | None = None) -> str:
        """Block until the job is no longer PENDING or IN_PROGRESS (or ``timeout`` seconds); return its status.

        ``interrupted`` (the caller's session event) stops the wait within 0.2 s with :class:`Interrupted`; the job
        itself goes on.
        """
        import time

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

    def _get(self, job_id: str, session: Any = None) -> dict[str, Any]:
        job = catalog.get_job(self.engine.cursor(), job_id) if isinstance(job_id, str) else None
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
        for job in catalog.list_jobs(cur, catalog.ACTIVE):
            reason = DIED.format(step=job["step"] or 0) + f"; {RESUMABLE} continues it"
            if job["status"] == "PENDING":
                reason = f"the process that created this job stopped before it started; {RESUMABLE} runs it"
            catalog.update_job(cur, job["id"], status="ERROR", error=reason, finished_on=catalog.now_ms())
            found.append(job["id"])
        return found

    def resume_stopped(self) -> list[str]:
        """Resume every job that stopped unfinished (its process died or closed the database), oldest first, whoever
        marked it ERROR: another open of the database may have recovered it before this one. Returns their ids; a
        job that cannot go on (its model name taken since) stays ERROR with its reason."""
        resumed = []
        for job in catalog.list_jobs(self.engine.cursor(), ["ERROR"]):
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

    def active(self) -> list[str]:
        with self._cv:
            return ([self._running] if self._running else []) + list(self._queue)

    def stop(self, reason: str = "its process exited", timeout: float | None = 60) -> None:
        """Stop the worker at the next step; the running job is checkpointed and left resumable (ERROR)."""
        self.stop_reason = reason
        self._shutdown.set()
        with self._cv:
            self._cv.notify_all()
        if timeout and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._shutdown.is_set():
                    self._cv.wait()
                if self._shutdown.is_set():
                    return
                job_id = self._queue.popleft()
                job = catalog.get_job(self.engine.cursor(), job_id)
                if job is None or job["status"] != "PENDING":
                    continue
                self._running = job_id
                self._cancel.setdefault(job_id, threading.Event())
                catalog.update_job(self.engine.cursor(), job_id, status="IN_PROGRESS", started_on=catalog.now_ms())
            try:
                Worker(self, job).run()
            finally:
                with self._cv:
                    self._running = None
                    self._cancel.pop(job_id, None)
                    self._cv.notify_all()


class Worker:
    """Runs one job: load, tokenize, train, store; writes progress and metrics as it goes."""

    def __init__(self, runner: JobRunner, job: dict[str, Any]):
        self.runner, self.job, self.id = runner, job, job["id"]
        self.cur = runner.engine.cursor()
        self.opts = TrainingOptions.from_json(job["options"])

    def run(self) -> None:
        try:
            self._train()
        except training.Cancelled:
            if self.runner._shutdown.is_set():
                self._update(status="ERROR", finished_on=catalog.now_ms(),
                             error=f"stopped when {self.runner.stop_reason}; {RESUMABLE} continues it")
            else:
                catalog.delete_checkpoint(self.cur, self.id)
                self._update(status="CANCELLED", finished_on=catalog.now_ms())
        except Exception as e:  # the job records any failure; the worker goes on with the next job
            msg = str(e) if isinstance(e, FtError) else f"{type(e).__name__}: {e}"
            try:
                self._update(status="ERROR", error=msg, finished_on=catalog.now_ms())
            except Exception:
                print(f"duckdb-ft: job {self.id} failed ({msg}) and could not be recorded", file=sys.stderr)

    def _update(self, **fields: Any) -> None:
        catalog.update_job(self.cur, self.id, **fields)

    def _train(self) -> None:
        job, opts = self.job, self.opts
        path = models.resolve(job["base_model"])
        tokenizer = models.load_tokenizer(path)
        stats = data.TokenStats()
        train_ex = data.tokenize_reader(tokenizer, catalog.read_rows(self.cur, self.id, "train"),
                                        opts.max_seq_length, stats)
        if not train_ex:
            raise InvalidArgument(f"every training pair was dropped: each prompt fills max_seq_length "
                                  f"({opts.max_seq_length}); raise it or shorten the prompts")
        val_stats = data.TokenStats()
        val_ex = (data.tokenize_reader(tokenizer, catalog.read_rows(self.cur, self.id, "validation"),
                                       opts.max_seq_length, val_stats)
                  if job["validation_rows"] else train_ex)
        steps_per_epoch = math.ceil(math.ceil(len(train_ex) / opts.batch_size) / opts.gradient_accumulation_steps)
        total = steps_per_epoch * opts.max_epochs
        self._update(train_tokens=stats.tokens, truncated_rows=stats.truncated + val_stats.truncated,
                     total_steps=total, step=0)
        resume = catalog.load_checkpoint(self.cur, self.id)
        if resume:
            catalog.delete_metrics_after(self.cur, self.id, resume[0])
        else:
            catalog.delete_metrics_after(self.cur, self.id, 0)
        base = models.load_for_training(path)
        cancel = self.runner._cancel[self.id]

        pending: list[dict[str, Any]] = []
        last_flush = [time.monotonic()]

        def flush() -> None:
            """Metrics and progress in one transaction: one commit (one fsync) for many steps."""
            if not pending:
                return
            m = pending[-1]
            losses = [x["validation_loss"] for x in pending if "validation_loss" in x]
            self.cur.execute("BEGIN TRANSACTION")
            try:
                for x in pending:
                    catalog.insert_metric(self.cur, self.id, x)
                self._update(progress=min(1.0, m["step"] / total), step=m["step"],
                             trained_tokens=int(round(stats.tokens * m["step"] / steps_per_epoch)),
                             training_loss=m["training_loss"],
                             **({"validation_loss": losses[-1]} if losses else {}))
                self.cur.execute("COMMIT")
            except BaseException:
                self.cur.execute("ROLLBACK")
                raise
            pending.clear()
            last_flush[0] = time.monotonic()

        def on_step(m: dict[str, Any]) -> None:
            pending.append(m)
            if "validation_loss" in m or time.monotonic() - last_flush[0] >= FLUSH_SECONDS:
                flush()

        def save_checkpoint(step: int, state: bytes) -> None:
            flush()
            catalog.save_checkpoint(self.cur, self.id, step, state)

        hooks = training.Hooks(
            on_step=on_step,
            should_stop=lambda: cancel.is_set() or self.runner._shutdown.is_set(),
            save_checkpoint=save_checkpoint,
            checkpoint_on_stop=self.runner._shutdown.is_set,
        )
        try:
            result = training.train(base, train_ex, val_ex, opts, tokenizer.pad_token_id, hooks,
                                    resume=resume[1] if resume else None)
        finally:
            flush()
        finished = catalog.now_ms()
        catalog.finish_job_with_model(self.cur, self.id, {
            "schema_name": job["schema_name"], "name": job["model_name"], "base_model": job["base_model"],
            "lora_config": json.dumps(result.lora_config), "adapter": models.adapter_to_bytes(result.adapter),
            "job_id": self.id, "owner": job["owner"], "created_on": finished,
            "training_loss": result.training_loss, "validation_loss": result.validation_loss,
        }, {
            "status": "SUCCESS", "progress": 1.0, "finished_on": finished, "step": result.steps,
            "trained_tokens": stats.tokens * result.epochs, "training_loss": result.training_loss,
            "validation_loss": result.validation_loss,
        })


def _describe(job: dict[str, Any]) -> dict[str, Any]:
    """A job as Cortex's FINETUNE('DESCRIBE') shows it, plus duckdb-ft's own fields."""
    out: dict[str, Any] = {
        "id": job["id"],
        "status": job["status"],
        "progress": round(float(job["progress"] or 0.0), 4),
        "base_model": job["base_model"],
        "created_on": job["created_on"],
        "started_on": job["started_on"],
        "finished_on": job["finished_on"],
        "model": f"{job['schema_name']}.{job['model_name']}",
        "training_data": job["training_query"],
        "validation_data": job["validation_query"] or job["validation_source"],
        "trained_tokens": job["trained_tokens"] or 0,
        "training_result": {"training_loss": job["training_loss"], "validation_loss": job["validation_loss"]},
        "options": json.loads(job["options"]),
        "train_rows": job["train_rows"],
        "validation_rows": job["validation_rows"],
        "skipped_rows": job["skipped_rows"],
        "truncated_rows": job["truncated_rows"],
        "step": job["step"],
        "total_steps": job["total_steps"],
    }
    if job["error"]:
        out["error"] = {"message": job["error"]}
    return out


_RUNNERS: "weakref.WeakSet[JobRunner]" = weakref.WeakSet()


def _wait_at_exit() -> None:
    """A script that creates a job and ends waits for it, so no job is lost silently."""
    runners = [r for r in list(_RUNNERS) if r.active()]
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


# Wait before the interpreter starts shutting threads down: concurrent.futures refuses new work once its own
# exit hook has run (model loading uses a thread pool), and threading's exit hooks run in reverse order of
# registration, so registering after importing concurrent.futures puts this wait first. Plain atexit runs too late.
import concurrent.futures.thread  # noqa: E402,F401  (must be imported before registering)

if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_wait_at_exit)
else:  # pragma: no cover
    atexit.register(_wait_at_exit)
