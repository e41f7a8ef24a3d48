"""FINETUNE('ESTIMATE'): CREATE's checks and CREATE's snapshot, cleaning and tokenization, then a report instead of
a job. Nothing is left behind: the queries' rows are streamed into a private scratch database
(:mod:`duckdb_ft.prep.scratch`, with a memory limit of its own, spilling to a temporary directory of its own), where
every table of the analysis lives; it is closed and its directory removed when ESTIMATE returns or fails.

The pipeline, one module a stage, in the order it runs:

1. :func:`duckdb_ft.jobs.create.check_request`: CREATE's checks (options, base model, queries, privileges);
2. :mod:`duckdb_ft.prep.scratch`: the private scratch database the analysis runs in;
3. :mod:`duckdb_ft.prep.stage` and :mod:`duckdb_ft.prep.clean`: the rows staged and cleaned as CREATE would;
4. :mod:`duckdb_ft.prep.report`: leaks, tokens (the training tokenization) and the report with its warnings;
5. :mod:`duckdb_ft.ml.calibrate`: the cost, from a few measured steps of the real training loop.

``estimate`` returns the JSON report; ``data_report`` the per-row findings behind it (``FROM
finetune_data_report(...)``): one row per finding, with the row's number in its query's result.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import duckdb

from ..errors import FtError, InvalidArgument
from ..ml import calibrate, models
from ..options import TrainingOptions
from ..prep import clean, report as prep_report, scratch, stage
from .create import check_request

if TYPE_CHECKING:
    from ..surface.engine import Session


def _run(cur: Any, session: Session, base_model: str, training_query: str, validation_query: str | None,
         options: str | None, with_cost: bool = True, with_rows: bool = False,
         ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The report (with the time estimate: ``with_cost``) and, ``with_rows`` only, the per-row findings: one Python
    dict a finding, about a million at 1M rows of templated prompts, so ESTIMATE's report does not fetch them."""
    try:
        return _staged_run(cur, session, base_model, training_query, validation_query, options, with_cost,
                           with_rows)
    except FtError:
        raise
    except duckdb.OutOfMemoryException as e:  # the scratch database's (the user's query's errors come as OSError)
        raise InvalidArgument(f"ESTIMATE ran out of memory ({str(e).splitlines()[0]}): its scratch database may use "
                              f"{scratch.memory_limit()}; raise that with the environment variable "
                              f"{scratch.MEMORY_ENV} (e.g. '2GiB'), or SET threads lower") from None
    except Exception as e:  # the queries failed while running (not binding): as CREATE reports it
        raise InvalidArgument(f"reading the training data failed: {str(e).splitlines()[0]}") from None


def _staged_run(cur: Any, session: Session, base_model: str, training_query: str, validation_query: str | None,
                options: str | None, with_cost: bool, with_rows: bool,
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    req = check_request(cur, session, None, base_model, training_query, validation_query, options)
    tokenizer = models.load_tokenizer(req.base_path)
    with scratch.database(cur) as work:  # the queries run on cur; everything else in the scratch database
        st = stage.stage(cur, req.train_q, req.val_q, req.opts, into=work)
        findings = clean.analyze(work, st)
        opts = req.opts
        refused = None
        try:
            cleaning = clean.apply(work, st, findings, opts)
        except InvalidArgument as e:  # pii "refuse": CREATE would fail; the report says so and why
            if opts.pii != "refuse":
                raise
            refused = str(e)
            cleaning = clean.apply(work, st, findings, dataclasses.replace(opts, pii="keep"))
            cleaning["pii"] = "refuse"
        counts = stage.settle_splits(work, st)
        prep_report.leaks(work, st, findings)
        tok = prep_report.tokens(work, st, findings, tokenizer, opts, models.context_length(req.base_path))
        report = prep_report.report(work, st, findings, opts, cleaning, tok, counts, base_model)
        if with_cost:
            report["cost"].update(_time_estimate(work, st, req.base_path, opts, tok, report))
        if refused:
            report["warnings"].insert(0, {"finding": "create_fails", "message": refused,
                                          "fix": 'set {"pii": "mask"}, or remove the personal data'})
        rows = [] if not with_rows else work.execute(f"""
            SELECT f.query, f.row, s.split, f.finding, f.col AS "column", f.other_row, f.detail, s.dropped
            FROM {findings} f LEFT JOIN {st.table} s USING (query, row)
            UNION ALL
            SELECT query, row, NULL, 'skipped', NULL, NULL,
                   CASE WHEN prompt IS NULL THEN 'prompt is NULL' ELSE 'completion is NULL' END, dropped
            FROM {st.table} WHERE dropped = 'skipped'
            ORDER BY 1, 2, 4""").fetchall()
    keys = ("query", "row", "split", "finding", "column", "other_row", "detail", "dropped")
    return report, [dict(zip(keys, r)) for r in rows]


def _time_estimate(cur: Any, st: stage.Stage, path: str, opts: TrainingOptions, tok: dict[str, Any],
                   report: dict[str, Any]) -> dict:
    """Estimated training seconds on this machine: a calibration's seconds per token (:mod:`duckdb_ft.ml.calibrate`)
    times the tokens trained, plus validation (forward only, a third of the cost per token) at each evaluation."""
    if not report["cost"]["train_examples"]:
        return {"estimated_training_seconds": None}
    sample = cur.execute(f"SELECT prompt, completion FROM {st.table} WHERE dropped IS NULL AND split = 'train' "
                         f"USING SAMPLE reservoir(64 ROWS) REPEATABLE (42)").fetchall()
    try:
        measured, cached = calibrate.calibration(path, opts, sample)
    except Exception as e:  # the estimate is a help: a failed calibration leaves the rest of the report
        return {"estimated_training_seconds": None, "calibration": {"error": f"{type(e).__name__}: {e}"}}
    per_token = measured["seconds_per_token"]
    val_tokens = tok["validation_tokens"] or report["tokens"]["train_tokens"]
    evaluations = opts.max_epochs + (report["cost"]["total_steps"] // opts.eval_steps if opts.eval_steps else 0)
    seconds = per_token * (report["cost"]["trained_tokens"] + val_tokens * evaluations / 3)
    held = (report["tokens"]["train_tokens"] + tok["validation_tokens"]) * calibrate.BYTES_PER_EXAMPLE_TOKEN
    return {"estimated_training_seconds": round(seconds, 1),
            "estimated_peak_memory_mib": round(measured["peak_rss_mib"] + held / 2**20, 1),
            "calibration": {**measured, "cached": cached,
                            "method": f"{calibrate.STEPS} measured LoRA steps on this machine, cached per machine "
                                      f"and model; peak memory: the calibrating process's peak resident memory "
                                      f"plus the tokenized rows the worker holds"}}


def estimate(cur: Any, session: Session, base_model: str, training_query: str, validation_query: str | None = None,
             options: str | None = None) -> dict[str, Any]:
    """The ESTIMATE report of what CREATE with these arguments would train on."""
    return _run(cur, session, base_model, training_query, validation_query, options)[0]


def data_report(cur: Any, session: Session, base_model: str, training_query: str, validation_query: str | None = None,
                options: str | None = None) -> list[dict[str, Any]]:
    """The per-row findings of ESTIMATE (skipped rows included), ordered by query and row."""
    return _run(cur, session, base_model, training_query, validation_query, options, with_cost=False,
                with_rows=True)[1]


#: The columns of ``FROM finetune_data_report(...)``.
DATA_REPORT_FIELDS = {"query": "VARCHAR", "row": "BIGINT", "split": "VARCHAR", "finding": "VARCHAR",
                      "column": "VARCHAR", "other_row": "BIGINT", "detail": "VARCHAR", "dropped": "VARCHAR"}
