"""FINETUNE 'ESTIMATE''s report of a staged, cleaned snapshot: rows, tokens (with the base model's chat template,
counted by the very tokenization training uses), duplicates, validation leaks, personal data, cost, and warnings
each with its fix. Token findings (truncated, over the context, nothing to learn) join the findings table.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from ..catalog import registered
from ..ml import chat_tokens
from ..options import TrainingOptions
from . import duplicates
from .clean import SHOWN_ROWS, first_rows, rows_listed
from .stage import Stage

MIN_ROWS, GOOD_ROWS = 100, 1000  # a common rule of thumb for supervised fine-tuning
MIN_VALIDATION_ROWS = 50
LONG_SHARE, LONG_ROWS = 0.35, 0.05  # warn when the longest 5% of rows carry 35% of the trained tokens
CLASS_LIKE = 20  # at most this many distinct completions: a classification-like task
BATCH_ROWS = 8192  # rows per Arrow record batch tokenized
CHUNK_ROWS = 65536  # rows read from the staged table at a time to be tokenized
LISTED_ROWS = 100  # row numbers listed a kind of personal data and a query


def leaks(cur: Any, st: Stage, findings: str) -> None:
    """Validation rows (kept) whose prompt is also a kept training row's prompt."""
    cur.execute(f"""
        INSERT INTO {findings}
        SELECT v.query, v.row, 'validation_leak', 'prompt', min(t.row),
               'prompt also in training query row ' || min(t.row)
        FROM {st.table} v JOIN {st.table} t ON t.prompt = v.prompt AND t.split = 'train' AND t.dropped IS NULL
        WHERE v.split = 'validation' AND v.dropped IS NULL GROUP BY v.query, v.row""")


class Counts:
    """A histogram of non-negative integers (token counts): their number, sum, extremes, ``np.percentile(...,
    method="lower")`` and the sum of the k largest, exactly, in memory bounded by the largest value rather than
    by how many values there are."""

    def __init__(self) -> None:
        self.h = np.zeros(1, np.int64)

    def add(self, x: np.ndarray) -> None:
        if len(x):
            b = np.bincount(x)
            if len(b) > len(self.h):
                self.h = np.concatenate([self.h, np.zeros(len(b) - len(self.h), np.int64)])
            self.h[:len(b)] += b

    @property
    def n(self) -> int:
        return int(self.h.sum())

    def total(self) -> int:
        return int((self.h * np.arange(len(self.h))).sum())

    def percentile(self, q: float) -> int:
        """numpy's "lower" method: the value at index floor((n - 1) * q / 100) of the sorted values."""
        index = int(np.floor((self.n - 1) * np.true_divide(q, 100)))
        return int(np.searchsorted(np.cumsum(self.h), index, side="right"))

    def top_sum(self, k: int) -> int:
        """The sum of the ``k`` largest values."""
        counts, values = self.h[::-1], np.arange(len(self.h) - 1, -1, -1)
        taken = np.minimum(counts, np.maximum(0, k - (np.cumsum(counts) - counts)))
        return int((taken * values).sum())

    def stats(self) -> dict[str, int]:
        if not self.n:
            return {"min": 0, "p50": 0, "p95": 0, "max": 0, "total": 0}
        present = np.flatnonzero(self.h)
        return {"min": int(present[0]), "p50": self.percentile(50), "p95": self.percentile(95),
                "max": int(present[-1]), "total": self.total()}


def tokens(cur: Any, st: Stage, findings: str, tokenizer: Any, opts: TrainingOptions,
           context: int | None) -> dict[str, Any]:
    """Token counts of the kept rows, counted as the training worker tokenizes them
    (:func:`duckdb_ft.ml.data.encode_pairs`, windowed by :func:`duckdb_ft.ml.data.fit_window`), vectorised, a
    chunk of ``CHUNK_ROWS`` rows at a time (tokenized ``BATCH_ROWS`` at a time): what is kept of them is
    histograms (:class:`Counts`) and sums, and each chunk's token findings go to the findings table, so memory does
    not grow with the rows."""
    pairs = chat_tokens.encoder(tokenizer)
    hist = {"prompt": Counts(), "completion": Counts(), "learned_train": Counts()}
    sums = dict.fromkeys(("truncated", "over_context", "nothing_to_learn", "train_tokens", "validation_tokens",
                          "train_examples", "validation_examples"), 0)
    last = dict(cur.execute(f"SELECT query, max(row) FROM {st.table} GROUP BY query").fetchall())
    for query in ("training", "validation"):
        for lo in range(1, int(last.get(query) or 0) + 1, CHUNK_ROWS):
            chunk = cur.sql(f"SELECT query, row, split = 'train' AS train, prompt, completion FROM {st.table} "
                            f"WHERE dropped IS NULL AND query = $1 AND row >= $2 AND row < $3 ORDER BY row",
                            params=[query, lo, lo + CHUNK_ROWS]).to_arrow_table()
            for at in range(0, len(chunk), BATCH_ROWS):
                _count_batch(cur, findings, chunk.slice(at, BATCH_ROWS), pairs, opts, context, hist, sums)
    return {"train_examples": sums["train_examples"], "validation_examples": sums["validation_examples"],
            "validation_tokens": sums["validation_tokens"], "learned_train": hist["learned_train"], "summary": {
                "chat_template": True, "max_seq_length": opts.max_seq_length, "context_length": context,
                "prompt": hist["prompt"].stats(), "completion": hist["completion"].stats(),
                "truncated_rows": sums["truncated"], "over_context_rows": sums["over_context"],
                "nothing_to_learn_rows": sums["nothing_to_learn"], "train_tokens": sums["train_tokens"]}}


def _count_batch(cur: Any, findings: str, batch: pa.Table, pairs: chat_tokens.PairEncoder, opts: TrainingOptions,
                 context: int | None, hist: dict[str, Counts], sums: dict[str, int]) -> None:
    """One batch of :func:`tokens`: its counts into ``hist`` and ``sums``, its token findings into ``findings``."""
    n_p, n_c = (np.asarray(x, np.int64) for x in pairs.lengths(batch.column("prompt").to_pylist(),
                                                               batch.column("completion").to_pylist()))
    is_train = batch.column("train").to_numpy(zero_copy_only=False).astype(bool)
    length = n_p + n_c  # data.fit_window, on arrays: cut at max_seq_length; learnable: a completion token past 1
    n = np.minimum(length, opts.max_seq_length)
    learnable = n - np.maximum(n_p, 1) > 0
    kept, learned = np.where(learnable, n, 0), np.where(learnable, np.maximum(0, n - n_p), 0)
    hist["prompt"].add(n_p)
    hist["completion"].add(n_c)
    hist["learned_train"].add(learned[is_train])
    flagged = {"truncated": length > opts.max_seq_length, "over_context":
               length > context if context is not None else np.zeros(len(n), bool), "nothing_to_learn": ~learnable}
    for finding, mask in flagged.items():
        sums[finding] += int(mask.sum())
    sums["train_tokens"] += int(kept[is_train].sum())
    sums["validation_tokens"] += int(kept[~is_train].sum())
    sums["train_examples"] += int((is_train & learnable).sum())
    sums["validation_examples"] += int((~is_train & learnable).sum())
    counts = pa.table({"query": batch.column("query"), "row": batch.column("row"),
                       "n_prompt": pa.array(n_p, pa.int64()), "n_completion": pa.array(n_c, pa.int64())})
    _token_findings(cur, findings, counts, flagged, opts, context)


def _token_findings(cur: Any, findings: str, counts: pa.Table, flagged: dict[str, np.ndarray],
                    opts: TrainingOptions, context: int | None) -> None:
    """The rows of each token finding (truncated, over_context, nothing_to_learn) into the findings table."""
    details = {"truncated": f"n_prompt + n_completion || ' tokens, cut to max_seq_length {opts.max_seq_length}'",
               "over_context": f"n_prompt + n_completion || ' tokens, over the model''s context of {context}'",
               "nothing_to_learn": "'the prompt''s ' || n_prompt || ' tokens fill max_seq_length'"}
    for finding, mask in flagged.items():
        if not mask.any():
            continue
        with registered(cur, "__ft_token_flags", counts.filter(pa.array(mask))):
            cur.execute(f"INSERT INTO {findings} SELECT query, row, '{finding}', NULL, NULL, {details[finding]} "
                        f"FROM __ft_token_flags")


def _count(cur: Any, findings: str, finding: str, distinct: str = "query, row") -> int:
    return int(cur.execute(f"SELECT count(DISTINCT ({distinct})) FROM {findings} WHERE finding = ?",
                           [finding]).fetchall()[0][0])


def _rows_of(cur: Any, findings: str, where: str, params: list, limit: int) -> dict[str, tuple[int, list[int]]]:
    """{query: (distinct rows, the first ``limit``)} of the findings ``where`` selects (SQL does the counting)."""
    return first_rows(cur, f"SELECT query, row FROM {findings} WHERE {where}", params, limit)


def report(cur: Any, st: Stage, findings: str, opts: TrainingOptions, cleaning: dict[str, Any],
           tok: dict[str, Any], counts: dict[str, int], base_model: str) -> dict[str, Any]:
    """The ESTIMATE report (see the README's "ESTIMATE and cleaning")."""
    t = st.table
    returned = dict(cur.execute(f"SELECT query, count(*) FROM {t} GROUP BY query").fetchall())
    empty = cur.execute(f"SELECT count(*) FROM {t} WHERE dropped IS DISTINCT FROM 'skipped' "
                        f"AND (trim(prompt) = '' OR trim(completion) = '')").fetchall()[0][0]
    train_n = tok["train_examples"]
    steps = opts.steps_per_epoch(train_n) * opts.max_epochs if train_n else 0
    rows = {"returned": {"training_query": int(returned.get("training", 0)),
                         "validation_query": int(returned["validation"]) if st.has_validation_query else None},
            "skipped": st.skipped(cur), "empty": int(empty),
            "dropped_by_cleaning": sum(cleaning["dropped"].values()),
            "nothing_to_learn": tok["summary"]["nothing_to_learn_rows"],
            "kept": {"train": train_n, "validation": tok["validation_examples"]},
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
        listed = _rows_of(cur, findings, "finding = 'pii' AND detail = ?", [kind], LISTED_ROWS)
        personal[kind] = {"values": int(values), "rows": int(n_rows),
                          "training_rows": listed.get("training", (0, []))[1],
                          "validation_rows": listed.get("validation", (0, []))[1]}
    out = {"base_model": base_model, "rows": rows, "tokens": tok["summary"], "duplicates": dup,
           "personal_data": personal, "cleaning": cleaning,
           "cost": {"trained_tokens": tok["summary"]["train_tokens"] * opts.max_epochs, "epochs": opts.max_epochs,
                    "total_steps": steps, "train_examples": train_n}}
    out["warnings"] = _warnings(cur, st, findings, opts, out, tok["learned_train"])
    if opts.method != "sft":
        out["preference"], found = preference(cur, st, opts.method)
        out["warnings"].extend(found)
    return out


#: Above this share of pairs whose chosen answer is the longer one (or below 1 minus it), DPO can learn length.
LENGTH_BIAS = 0.9


def preference(cur: Any, st: Stage, method: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The training query's preference rows: dpo, the pairs, those whose chosen equals rejected (CREATE refuses
    them) and the length bias between chosen and rejected; kto, the rows labelled true, false and NULL. With the
    warnings they call for."""
    where = f"FROM {st.table} WHERE query = 'training' AND prompt IS NOT NULL AND completion IS NOT NULL"
    warnings = []
    if method == "kto":
        good, bad, missing = cur.execute(f"SELECT count(*) FILTER (label), count(*) FILTER (NOT label), "
                                         f"count(*) FILTER (label IS NULL) {where}").fetchall()[0]
        if missing:
            warnings.append({"finding": "create_fails", "message": f"{missing} rows have a NULL label",
                             "fix": "filter them out, or give them a label"})
        return {"desirable_rows": int(good), "undesirable_rows": int(bad), "null_label_rows": int(missing)}, warnings
    pairs, same, longer, chosen, rejected = cur.execute(
        f"SELECT count(*), count(*) FILTER (completion = rejected), "
        f"count(*) FILTER (length(completion) > length(rejected)), avg(length(completion)), avg(length(rejected)) "
        f"{where} AND rejected IS NOT NULL").fetchall()[0]
    share = longer / pairs if pairs else None
    if same:
        warnings.append({"finding": "create_fails", "message": f"{same} pairs have chosen equal to rejected",
                         "fix": "filter them out: WHERE chosen <> rejected"})
    if share is not None and pairs >= 10 and (share >= LENGTH_BIAS or share <= 1 - LENGTH_BIAS):
        warnings.append({"finding": "length_bias", "message": f"the chosen answer is the longer one in "
                         f"{round(100 * share)}% of the pairs: DPO may learn length rather than quality",
                         "fix": "add pairs where the better answer is the shorter one, or check with EVALUATE on "
                                "pairs of even lengths"})
    return {"pairs": int(pairs), "identical_chosen_rejected": int(same), "chosen_longer_share": share,
            "mean_chosen_chars": chosen, "mean_rejected_chars": rejected}, warnings


def _warnings(cur: Any, st: Stage, findings: str, opts: TrainingOptions, r: dict[str, Any],
              learned: Counts) -> list[dict[str, str]]:
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
            listed = rows_listed(_rows_of(cur, findings, "finding = ?", [finding], 5), 5)
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
    total = float(learned.total())  # of the training rows' learned tokens
    top = max(1, math.ceil(learned.n * LONG_ROWS))
    if learned.n >= 20 and total and learned.top_sum(top) / total >= LONG_SHARE:
        warn("long_rows", f"the longest {top} rows carry {learned.top_sum(top) / total:.0%} of the trained "
             f"completion tokens: most of the loss budget goes to a few rows",
             "shorten or split the long rows, or lower max_seq_length")
    val, source = r["rows"]["kept"]["validation"], r["rows"]["validation_source"]
    if source.startswith("training rows") and not round(opts.validation_fraction * 100):
        warn("no_validation", f"validation_fraction {opts.validation_fraction:g}: every row trains, and the "
             "validation loss (and keep_best's choice of step) is measured on training rows",
             "pass a validation query to measure on rows the model does not train on")
    elif source.startswith("training rows"):
        warn("no_validation", "too few rows to hold some out: the validation loss is measured on training rows",
             "pass a validation query, or add rows")
    elif not st.has_validation_query and n + val < GOOD_ROWS:
        warn("held_out_rows", f"{val} of your {n + val} rows ({val / (n + val):.0%}) are held out to measure the "
             f"validation loss and are not trained on (no validation query; validation_fraction "
             f"{opts.validation_fraction:g}): on a table under {GOOD_ROWS} rows each row counts",
             'set {"validation_fraction": 0} to train on every row (the validation loss is then measured on '
             'training rows), or pass a validation query')
    if (val < MIN_VALIDATION_ROWS and not source.startswith("training rows")
            and (st.has_validation_query or n + val >= GOOD_ROWS)):
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
