"""COMPLETE's usage history: each call of COMPLETE / TRY_COMPLETE (one chunk of rows) counted per model version and
role, and ``finetune_usage()`` / ``SHOW USAGE``, which read it (a role sees its own rows, the administrator all).

A call is one invocation of the SQL function by DuckDB: one per statement for up to 2048 rows (DuckDB hands a
scalar function its rows in chunks of at most 2048). Rows are the rows it completed with a model and a prompt (rows
with a NULL model or prompt are NULL without a call to a model); errors are the rows that got no answer because of
an error (for COMPLETE an error fails the whole call, so every row of it). Prompt and completion tokens are the
generated rows' own counts, what Cortex's ``usage`` object reports. A request to ``duckdb-ft serve``'s
completions API is one call of COMPLETE with one row (:func:`complete_request`).
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import MutableSet
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..catalog import usage as usagedb
from ..errors import FtError, Interrupted, PermissionDenied
from ..governance import quotas
from ..ml import complete as completion, schema
from ..options import CompleteOptions
from ..queries import model_ref
from .engine import Engine, Session

if TYPE_CHECKING:
    from ..ml import batcher as batcher_types


def complete_and_record(engine: Engine, session: Session, models: Sequence[str | None],
                        prompts: Sequence[str | None], options: Sequence[str | None] | None, *,
                        try_mode: bool, function: str | None = None) -> list[str | None]:
    """:func:`complete_rows` over one chunk, its usage added to the engine's recorder under ``function`` (default
    COMPLETE or TRY_COMPLETE) and flushed (one transaction per call, whether the call succeeded or raised)."""
    found: dict[str, dict | None] = {}
    requests: dict[int, completion.Request] = {}
    try:
        quotas.check_complete(session, engine.cursor(), options)  # the role's limits (ALTER ROLE ... SET)
    except PermissionDenied:
        if try_mode:  # TRY_COMPLETE: NULL where COMPLETE would raise
            return [None] * len(models)
        raise
    try:
        return completion.complete_rows(lambda name: engine.resolve_model(session, name, found), models, prompts,
                                        options, try_mode=try_mode, on_request=requests.__setitem__)
    finally:
        record(engine.usage, function or ("TRY_COMPLETE" if try_mode else "COMPLETE"), session.role, models,
               prompts, found, requests)
        engine.usage.flush()


def complete_request(engine: Engine, session: Session, model: str, messages: list[dict[str, str]], options: str, *,
                     on_text: Callable[[str], None] | None = None, seed: int | None = None,
                     stop: Sequence[str] = (), timeout: float | None = None,
                     cancelled: Callable[[], bool] | None = None,
                     loops: MutableSet[Any] | None = None) -> batcher_types.Completion:
    """One request's answer through its base model's decode loop (``ml/batcher.py``), which concurrent requests
    share: COMPLETE's checks (the role's limits, the options, the model's USAGE), COMPLETE's greedy tokens, and
    COMPLETE's usage history (function ``COMPLETE``, the session's role), flushed once the request ends.

    Returns the decode loop's Completion (``text``, token counts, ``finish_reason``). ``on_text`` gets the
    answer's text piece by piece as it is generated; ``stop``: OpenAI's stop sequences (the row ends at the first,
    its text cut before it); ``cancelled`` is polled while it runs (True: the request is cancelled, its slot freed,
    :class:`Interrupted` raised); ``loops`` collects the decode loop used (for its metrics).
    """
    from ..ml import batcher

    quotas.check_complete(session, engine.cursor(), [options])
    req = completion.Request(messages, CompleteOptions.parse(options))
    schema.parse_response_format(req.options.response_format)
    found: dict[str, dict | None] = {}
    try:
        loaded, adapter = engine.resolve_model(session, model, found)
        loop = batcher.batcher_for(loaded)
        if loops is not None:
            loops.add(loop)
        future = loop.submit(req, adapter, on_token=on_text, timeout=timeout, seed=seed, stop=stop)
        while True:
            try:
                req.result = future.result(timeout=0.1)
                return req.result
            except concurrent.futures.TimeoutError:
                if cancelled is not None and cancelled():
                    loop.cancel(future)
                    raise Interrupted("the request was cancelled (its client went away, or the server stops)")
    except FtError as e:
        req.error = e
        raise
    finally:
        record(engine.usage, "COMPLETE", session.role, [model], [json.dumps(messages)], found, {0: req})
        engine.usage.flush()


def record(recorder: usagedb.UsageRecorder, function: str, role: str, models: Sequence[str | None],
           prompts: Sequence[str | None], found: dict[str, dict | None],
           requests: dict[int, completion.Request]) -> None:
    """Add one call's counts per model version to ``recorder``."""
    per: dict[tuple[str, str | None], list[int]] = {}
    for i, (m, p) in enumerate(zip(models, prompts)):
        if m is None or p is None:
            continue
        row = found.get(m)
        key = (model_ref(row["schema_name"], row["name"], None), row["version"]) if row else (m, None)
        counts = per.setdefault(key, [0, 0, 0, 0])
        r = requests.get(i)
        counts[0] += 1
        if r is not None and r.result is not None and r.error is None:
            counts[1] += r.result.prompt_tokens
            counts[2] += r.result.completion_tokens
        else:
            counts[3] += 1
    for (model, version), (rows, pt, ct, errors) in per.items():
        recorder.add(function, model, version, role, rows=rows, prompt_tokens=pt, completion_tokens=ct,
                     errors=errors)


def usage_rows(engine: Engine, session: Session) -> list[dict[str, Any]]:
    """The usage history the session's role may see: its own roles' rows; the administrator's: everyone's."""
    engine.usage.flush()
    check = session.checker()
    return usagedb.read(engine.cursor(), None if check.admin else sorted(check.roles))


USAGE_COLUMNS = ["start_time", "end_time", "function_name", "model_name", "version", "role", "calls", "rows",
                 "prompt_tokens", "completion_tokens", "tokens", "errors", "trained_tokens"]
#: The JSON shape finetune_usage() unpacks (timestamps travel as text).
USAGE_TYPE = {c: ("BIGINT" if c in ("calls", "rows", "prompt_tokens", "completion_tokens", "tokens", "errors",
                                    "trained_tokens") else "VARCHAR") for c in USAGE_COLUMNS}


def as_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "start_time": str(r["start_time"]), "end_time": str(r["end_time"])} for r in rows]

