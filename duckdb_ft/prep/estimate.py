"""FINETUNE 'ESTIMATE''s report of a staged, cleaned snapshot: rows, tokens (with the base model's chat template,
counted by the very tokenization training uses), duplicates, validation leaks, personal data, cost, and warnings
each with its fix. Token findings (truncated, over the context, nothing to learn) join the findings table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from ..ml import chat_tokens
from ..options import TrainingOptions
from . import duplicates
from .clean import SHOWN_ROWS, rows_listed
from .stage import Stage

MIN_ROWS, GOOD_ROWS = 100, 1000  # a common rule of thumb for supervised fine-tuning
MIN_VALIDATION_ROWS = 50
LONG_SHARE, LONG_ROWS = 0.35, 0.05  # warn when the longest 5% of rows carry 35% of the trained tokens
CLASS_LIKE = 20  # at most this many distinct completions: a classification-like task
BATCH_ROWS = 8192  # rows per Arrow record batch tokenized


def leaks(cur: Any, st: Stage, findings: str) -> None:
    """Validation rows (kept) whose prompt is also a kept training row's prompt."""
    cur.execute(f"""
        INSERT INTO {findings}
        SELECT v.query, v.row, 'validation_leak', 'prompt', min(t.row),
               'prompt also in training query row ' || min(t.row)
        FROM {st.table} v JOIN {st.table} t ON t.prompt = v.prompt AND t.split = 'train' AND t.dropped IS NULL
        WHERE v.split = 'validation' AND v.dropped IS NULL GROUP BY v.query, v.row""")


def _stats(x: np.ndarray) -> dict[str, int]:
    if not len(x):
        return {"min": 0, "p50": 0, "p95": 0, "max": 0, "total": 0}
    return {"min": int(x.min()), "p50": int(np.percentile(x, 50, method="lower")),
            "p95": int(np.percentile(x, 95, method="lower")), "max": int(x.max()), "total": int(x.sum())}


def tokens(cur: Any, st: Stage, findings: str, tokenizer: Any, opts: TrainingOptions,
           context: int | None) -> dict[str, Any]:
    """Token counts of the kept rows, in Arrow record batches, counted as the training worker tokenizes them
    (:func:`duckdb_ft.ml.data.encode_pairs`, windowed by :func:`duckdb_ft.ml.data.fit_window`), vectorised."""
    pairs = chat_tokens.encoder(tokenizer)
    reader = cur.sql(f"SELECT query, row, split = 'train' AS train, prompt, completion FROM {st.table} "
                     f"WHERE dropped IS NULL ORDER BY split, query, row").to_arrow_reader(BATCH_ROWS)
    parts = []
    for batch in reader:
        n_p, n_c = pairs.lengths(batch.column("prompt").to_pylist(), batch.column("completion").to_pylist())
        parts.append(pa.table({"query": batch.column("query"), "row": batch.column("row"),
                               "train": batch.column("train"), "n_prompt": pa.array(n_p, pa.int64()),
                               "n_completion": pa.array(n_c, pa.int64())}))
    counts = (pa.concat_tables(parts) if parts else pa.table(
        {"query": pa.array([], pa.string()), "row": pa.array([], pa.int64()), "train": pa.array([], pa.bool_()),
         "n_prompt": pa.array([], pa.int64()), "n_completion": pa.array([], pa.int64())}))
    n_p, n_c = counts.column("n_prompt").to_numpy(), counts.column("n_completion").to_numpy()
    is_train = counts.column("train").to_numpy(zero_copy_only=False).astype(bool)
    length = n_p + n_c  # data.fit_window, on arrays: cut at max_seq_length; learnable: a completion token past 1
    n = np.minimum(length, opts.max_seq_length)
    learnable = n - np.maximum(n_p, 1) > 0
    a = {"prompt": n_p, "completion": n_c, "kept": np.where(learnable, n, 0),
         "learned": np.where(learnable, np.maximum(0, n - n_p), 0)}
    flagged = {"truncated": length > opts.max_seq_length, "over_context":
               length > context if context is not None else np.zeros(len(n), bool), "nothing_to_learn": ~learnable}
    _token_findings(cur, findings, counts, flagged, opts, context)
    return {"arrays": a, "train": is_train, "learnable": learnable, "summary": {
        "chat_template": True, "max_seq_length": opts.max_seq_length, "context_length": context,
        "prompt": _stats(a["prompt"]), "completion": _stats(a["completion"]),
        "truncated_rows": int(flagged["truncated"].sum()), "over_context_rows": int(flagged["over_context"].sum()),
        "nothing_to_learn_rows": int((~learnable).sum()),
        "train_tokens": int(a["kept"][is_train].sum()),
    }}


def _token_findings(cur: Any, findings: str, counts: pa.Table, flagged: dict[str, np.ndarray],
                    opts: TrainingOptions, context: int | None) -> None:
    """The rows of each token finding (truncated, over_context, nothing_to_learn) into the findings table."""
    details = {"truncated": f"n_prompt + n_completion || ' tokens, cut to max_seq_length {opts.max_seq_length}'",
               "over_context": f"n_prompt + n_completion || ' tokens, over the model''s context of {context}'",
               "nothing_to_learn": "'the prompt''s ' || n_prompt || ' tokens fill max_seq_length'"}
    for finding, mask in flagged.items():
        if not mask.any():
            continue
        cur.register("__ft_token_flags", counts.filter(pa.array(mask)))
        try:
            cur.execute(f"INSERT INTO {findings} SELECT query, row, '{finding}', NULL, NULL, {details[finding]} "
                        f"FROM __ft_token_flags")
        finally:
            cur.unregister("__ft_token_flags")


def _count(cur: Any, findings: str, finding: str, distinct: str = "query, row") -> int:
    return int(cur.execute(f"SELECT count(DISTINCT ({distinct})) FROM {findings} WHERE finding = ?",
                           [finding]).fetchall()[0][0])


def _rows_of(cur: Any, findings: str, where: str, params: list) -> list[tuple[str, int]]:
    return [(q, int(r)) for q, r in cur.execute(
        f"SELECT DISTINCT query, row FROM {findings} WHERE {where} ORDER BY query, row", params).fetchall()]


def report(cur: Any, st: Stage, findings: str, opts: TrainingOptions, cleaning: dict[str, Any],
           tok: dict[str, Any], counts: dict[str, int], base_model: str) -> dict[str, Any]:
    """The ESTIMATE report (see the README's "ESTIMATE and cleaning")."""
    t = st.table
    returned = dict(cur.execute(f"SELECT query, count(*) FROM {t} GROUP BY query").fetchall())
    empty = cur.execute(f"SELECT count(*) FROM {t} WHERE dropped IS DISTINCT FROM 'skipped' "
                        f"AND (trim(prompt) = '' OR trim(completion) = '')").fetchall()[0][0]
    train_n = int((tok["train"] & tok["learnable"]).sum())
    steps = opts.steps_per_epoch(train_n) * opts.max_epochs if train_n else 0
    rows = {"returned": {"training_query": int(returned.get("training", 0)),
                         "validation_query": int(returned["validation"]) if st.has_validation_query else None},
            "skipped": st.skipped(cur), "empty": int(empty),
            "dropped_by_cleaning": sum(cleaning["dropped"].values()),
            "nothing_to_learn": tok["summary"]["nothing_to_learn_rows"],
            "kept": {"train": train_n, "validation": int((~tok["train"] & tok["learnable"]).sum())},
            "validation_source": st.validation_source}
    dup = {"exact_duplicate_rows": _count(cur, findings, "exact_duplicate"),
           "conflicting_prompts": int(cur.execute(
               f"SELECT count(DISTINCT (s.query, s.prompt)) FROM {findings} f JOIN {t} s USING (query, row) "
               f"WHERE f.finding = 'conflicting'").fetchall()[0][0]),
           "conflicting_rows": _count(cur, findings, "conflicting"),
           "near_duplicate_rows": _count(cur, findings, "near_duplicate"),
           "near_threshold": duplicates.NEAR_THRESHOLD, "near_method": duplicates.NEAR_METHOD,
           "validation_leak_rows": _count(cur, findings, "validation_leak")}
    personal = {}
    for kind, values, n_rows in cur.execute(f"SELECT detail, count(*), count(DISTINCT (query, row)) FROM {findings} "
                                            f"WHERE finding = 'pii' GROUP BY detail ORDER BY detail").fetchall():
        listed = _rows_of(cur, findings, "finding = 'pii' AND detail = ?", [kind])
        personal[kind] = {"values": int(values), "rows": int(n_rows),
                          "training_rows": [r for q, r in listed if q == "training"][:100],
                          "validation_rows": [r for q, r in listed if q == "validation"][:100]}
    a = tok["arrays"]
    learned = np.sort(a["learned"][tok["train"]])[::-1]
    out = {"base_model": base_model, "rows": rows, "tokens": tok["summary"], "duplicates": dup,
           "personal_data": personal, "cleaning": cleaning,
           "cost": {"trained_tokens": tok["summary"]["train_tokens"] * opts.max_epochs, "epochs": opts.max_epochs,
                    "total_steps": steps, "train_examples": train_n}}
    out["warnings"] = _warnings(cur, st, findings, opts, out, learned)
    return out


def _warnings(cur: Any, st: Stage, findings: str, opts: TrainingOptions, r: dict[str, Any],
              learned: np.ndarray) -> list[dict[str, str]]:
    w: list[dict[str, str]] = []

    def warn(finding: str, message: str, fix: str) -> None:
        w.append({"finding": finding, "message": message, "fix": fix})

    n, dup, tok = r["rows"]["kept"]["train"], r["duplicates"], r["tokens"]
    if n < MIN_ROWS:
        warn("few_rows", f"{n} training rows: fine-tuning usually needs at least {MIN_ROWS} examples, better "
             f"{GOOD_ROWS}; with fewer the model memorizes them", "add examples (or fewer epochs and a lower "
             "learning rate)")
    elif n < GOOD_ROWS:
        warn("few_rows", f"{n} training rows: {GOOD_ROWS} or more usually train a more robust model",
             "add examples if you have them")
    if not n:
        warn("create_fails", "no training row has anything left to learn: CREATE's job would fail",
             "raise max_seq_length or shorten the prompts")
    for key, finding, what, fix in (
            ("exact_duplicate_rows", "exact_duplicate", "row(s) repeat an earlier row exactly",
             "the default dedupe \"exact\" drops them" if opts.dedupe != "none" else 'set {"dedupe": "exact"}'),
            ("conflicting_rows", "conflicting", "row(s) share a prompt with a different completion",
             'set {"drop_conflicting": true}, or fix the labels'),
            ("near_duplicate_rows", "near_duplicate", "row(s) have a prompt nearly equal to an earlier one",
             'set {"dedupe": "near"} to drop them'),
            ("validation_leak_rows", "validation_leak", "validation row(s) have a prompt that is also a training "
             "prompt: the validation loss is optimistic", "exclude those prompts from the validation query")):
        if dup[key]:
            listed = rows_listed(_rows_of(cur, findings, "finding = ?", [finding]), 5)
            warn(finding, f"{dup[key]} {what} ({listed})", fix)
    if r["personal_data"]:
        kinds = ", ".join(f"{v['values']} {k}" for k, v in r["personal_data"].items())
        warn("personal_data", f"personal data in the rows: {kinds}" + (
            "; CREATE would fail with pii \"refuse\"" if opts.pii == "refuse" else ""),
            'set {"pii": "mask"} to train on typed placeholders (<EMAIL>, ...) instead, or remove it')
    if tok["truncated_rows"]:
        warn("truncated", f"{tok['truncated_rows']} rows are longer than max_seq_length {opts.max_seq_length} "
             f"(longest: {tok['prompt']['max'] + tok['completion']['max']} tokens at most) and are cut",
             "raise max_seq_length, or shorten those rows")
    if tok["over_context_rows"]:
        warn("over_context", f"{tok['over_context_rows']} rows are longer than the model's context "
             f"({tok['context_length']} tokens)", "shorten those rows: the model cannot use text past its context")
    if tok["nothing_to_learn_rows"]:
        warn("nothing_to_learn", f"{tok['nothing_to_learn_rows']} rows have no completion token left inside "
             f"max_seq_length and are not trained on", "raise max_seq_length or shorten those prompts")
    total = float(learned.sum())
    top = max(1, math.ceil(len(learned) * LONG_ROWS))
    if len(learned) >= 20 and total and learned[:top].sum() / total >= LONG_SHARE:
        warn("long_rows", f"the longest {top} rows carry {learned[:top].sum() / total:.0%} of the trained "
             f"completion tokens: most of the loss budget goes to a few rows",
             "shorten or split the long rows, or lower max_seq_length")
    val = r["rows"]["kept"]["validation"]
    if r["rows"]["validation_source"].startswith("training rows"):
        warn("no_validation", "too few rows to hold some out: the validation loss is measured on training rows",
             "pass a validation query, or add rows")
    elif val < MIN_VALIDATION_ROWS:
        warn("small_validation", f"{val} validation rows: too few to tell two runs apart by validation loss",
             f"use at least {MIN_VALIDATION_ROWS} (a validation query, or a larger validation_fraction)")
    classes = cur.execute(f"SELECT count(*) AS n FROM {st.table} WHERE dropped IS NULL AND split = 'train' "
                          f"GROUP BY completion ORDER BY n DESC LIMIT {CLASS_LIKE + 1}").fetchall()
    if 2 <= len(classes) <= CLASS_LIKE and n >= 5 * len(classes):
        top_n, low_n = classes[0][0], classes[-1][0]
        if top_n / n >= 0.8 or top_n >= 10 * low_n:
            warn("imbalanced", f"the completions look like {len(classes)} classes, heavily imbalanced: the most "
                 f"common is {top_n} of {n} rows, the rarest {low_n}", "balance the classes (sample the common "
                 "ones down or the rare ones up) before training")
    return w


SHOWN = SHOWN_ROWS
