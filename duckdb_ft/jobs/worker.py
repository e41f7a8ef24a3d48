"""One job's run on the worker thread: load, tokenize, train, store; progress and metrics written as it goes.

A job that fails records why (ERROR); one cancelled is CANCELLED; one stopped because its database or process
closed is checkpointed and left ERROR, resumable with finetune('RESUME', id). On success the model and the job's
SUCCESS are written in one transaction: either both exist, or neither.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

from .. import catalog
from ..catalog import jobs as jobdb, models as modeldb
from ..errors import FtError, InvalidArgument
from ..governance.run_limits import Deadline
from ..ml import data, models, preference, training
from ..options import TrainingOptions
from . import launch, lineage

if TYPE_CHECKING:
    from .runner import JobRunner

FLUSH_SECONDS = 1.0  # metrics and progress reach the catalog at least this often (and at every evaluation)
RESUMABLE = "finetune('RESUME', id)"  # in the error of every job that stopped unfinished and can go on


class Worker:
    """Runs one job: load, tokenize, train, store; writes progress and metrics as it goes."""

    def __init__(self, runner: JobRunner, job: dict[str, Any]):
        self.runner, self.job, self.id = runner, job, job["id"]
        self.cur = runner.engine.cursor()
        self.opts = TrainingOptions.from_json(job["options"])
        self.deadline = Deadline(self.cur, job["owner"], {})  # none until the job starts (_train)

    def run(self) -> None:
        try:
            self._train()
        except training.Cancelled:
            if self.deadline.why and not self.runner.cancels[self.id].is_set():  # a role's limit stopped it
                jobdb.delete_checkpoint(self.cur, self.id)
                self._update(status="CANCELLED", error=self.deadline.error(), finished_on=catalog.now_ms())
            elif self.runner.shutdown.is_set():
                self._update(status="ERROR", finished_on=catalog.now_ms(),
                             error=f"stopped when {self.runner.stop_reason}; {RESUMABLE} continues it")
            else:
                jobdb.delete_checkpoint(self.cur, self.id)
                self._update(status="CANCELLED", finished_on=catalog.now_ms())
        except Exception as e:  # the job records any failure; the worker goes on with the next job
            msg = str(e) if isinstance(e, FtError) else f"{type(e).__name__}: {e}"
            try:
                self._update(status="ERROR", error=msg, finished_on=catalog.now_ms())
            except Exception:
                print(f"duckdb-ft: job {self.id} failed ({msg}) and could not be recorded", file=sys.stderr)

    def _update(self, **fields: Any) -> None:
        jobdb.update_job(self.cur, self.id, **fields)

    def _train(self) -> None:
        job, opts = self.job, self.opts
        self.deadline = Deadline.of(self.cur, job["owner"])  # the owner's limits on a running job, from now
        if self.deadline.passed():  # the role's day of tokens spent (or no seconds): stop before loading anything
            raise training.Cancelled()
        path = models.resolve(job["base_model"])
        tokenizer = models.load_tokenizer(path)
        rows_of = job.get("snapshot_of") or self.id  # a sweep's jobs read its first job's snapshot
        stats = data.TokenStats()
        objective = preference.objective(opts)  # dpo, kto: their rows and loss (None: sft)

        def tokenized(split: str, counts: data.TokenStats) -> Any:
            reader = jobdb.read_rows(self.cur, rows_of, split)
            if objective is not None:
                return preference.tokenize_reader(tokenizer, reader, opts.method, opts.max_seq_length,
                                                  opts.batch_size, counts)
            return data.tokenize_reader(tokenizer, reader, opts.max_seq_length, counts)

        train_ex = tokenized("train", stats)
        if not train_ex:
            raise InvalidArgument(f"every training pair was dropped: each prompt fills max_seq_length "
                                  f"({opts.max_seq_length}); raise it or shorten the prompts")
        val_stats = data.TokenStats()
        val_ex = tokenized("validation", val_stats) if job["validation_rows"] else data.loss_sample(train_ex)
        steps_per_epoch = opts.steps_per_epoch(len(train_ex))
        total = steps_per_epoch * opts.max_epochs
        self._update(train_tokens=stats.tokens, truncated_rows=stats.truncated + val_stats.truncated,
                     total_steps=total, step=0)
        resume = jobdb.load_checkpoint(self.cur, self.id)
        if resume:
            jobdb.delete_metrics_after(self.cur, self.id, resume[0])
        else:
            jobdb.delete_metrics_after(self.cur, self.id, 0)
        local = opts.world_size == 1  # else torchrun's processes load it (jobs/launch.py)
        base = models.load_base_for_training(path, opts.quantization) if local else None
        # a continued job starts from the parent's adapter; a preference job keeps it as its reference, resumed too
        initial = None if resume and objective is None else lineage.initial_adapter(self.cur, job)
        cancel = self.runner.cancels[self.id]

        pending: list[dict[str, Any]] = []
        latest: dict[str, float] = {}  # the method's metrics as last logged (training's and validation's)
        last_flush = [time.monotonic()]

        def flush() -> None:
            """Metrics and progress in one transaction: one commit (one fsync) for many steps."""
            if not pending:
                return
            m = pending[-1]
            losses = [x["validation_loss"] for x in pending if "validation_loss" in x]
            for x in pending:
                latest.update(x.get("method_metrics") or {})
            with catalog.transaction(self.cur):
                for x in pending:
                    jobdb.insert_metric(self.cur, self.id, x)
                self._update(progress=min(1.0, m["step"] / total), step=m["step"],
                             trained_tokens=int(round(stats.tokens * m["step"] / steps_per_epoch)),
                             training_loss=m["training_loss"],
                             **({"validation_loss": losses[-1]} if losses else {}),
                             **({"method_metrics": json.dumps(latest)} if latest else {}))
            pending.clear()
            last_flush[0] = time.monotonic()

        def on_step(m: dict[str, Any]) -> None:
            pending.append(m)
            if "validation_loss" in m or time.monotonic() - last_flush[0] >= FLUSH_SECONDS:
                flush()

        def save_checkpoint(step: int, state: bytes) -> None:
            flush()
            jobdb.save_checkpoint(self.cur, self.id, step, state)

        hooks = training.Hooks(
            on_step=on_step,
            should_stop=lambda: cancel.is_set() or self.runner.shutdown.is_set() or self.deadline.passed(),
            save_checkpoint=save_checkpoint,
            checkpoint_on_stop=self.runner.shutdown.is_set,
        )
        try:
            if local:
                result = training.train(base, train_ex, val_ex, opts, tokenizer.pad_token_id, hooks,
                                        resume=resume[1] if resume else None,
                                        initial=models.adapter_from_bytes(initial) if initial else None,
                                        objective=objective)
            else:
                result = launch.train(opts, job["base_model"], lambda split: jobdb.read_rows(self.cur, rows_of, split),
                                      bool(job["validation_rows"]), hooks, resume=resume[1] if resume else None,
                                      initial=initial)
        finally:
            flush()
        finished = catalog.now_ms()
        adapter = models.adapter_to_bytes(result.adapter)
        trained_tokens = int(round(stats.tokens * result.epochs))
        metrics = {"training_loss": result.training_loss, "validation_loss": result.validation_loss,
                   "steps": result.steps, "epochs": result.epochs, "trained_tokens": trained_tokens,
                   "best_step": result.best_step, "stopped_early": result.stopped_early}
        modeldb.finish_job_with_model(self.cur, self.id, {
            "schema_name": job["schema_name"], "name": job["model_name"], "version": job.get("model_version") or "v1",
            "base_model": job["base_model"],
            "lora_config": json.dumps(result.lora_config), "adapter": adapter,
            "job_id": self.id, "owner": job["owner"], "created_on": finished,
            "training_loss": result.training_loss, "validation_loss": result.validation_loss,
            **lineage.model_lineage(self.cur, job, rows_of, path, adapter, metrics),
        }, {
            "status": "SUCCESS", "progress": 1.0, "finished_on": finished, "step": result.steps,
            "trained_tokens": trained_tokens, "training_loss": result.training_loss,
            "validation_loss": result.validation_loss, "best_step": result.best_step,
            "stopped_early": result.stopped_early,
        })
