"""EVALUATE's metrics: what each one means, its per-row score, and its corpus score.

Per row, every metric scores one prediction against its reference (the ``completion`` column). Over an
evaluation, a metric's corpus score is the mean of its row scores, except ``bleu`` and ``chrf``, whose corpus
scores are sacrebleu's corpus BLEU and chrF (n-gram statistics summed over the rows, then scored: not the mean of
sentence scores), so they equal what ``sacrebleu`` prints on the same predictions and references.

- ``exact_match``: 1 when prediction and reference are equal after trimming whitespace at both ends, else 0.
- ``normalized_match``: 1 when equal after lower-casing, removing punctuation and collapsing whitespace.
- ``contains``: 1 when the normalized reference occurs in the normalized prediction.
- ``token_f1``: F1 of the bag of normalized tokens (SQuAD's token overlap, without dropping articles).
- ``rouge_l``: ROUGE-L F-measure of ``rouge-score`` (``RougeScorer(["rougeL"])``, no stemming).
- ``bleu``, ``chrf``: sacrebleu's sentence BLEU (effective order) and chrF per row; corpus BLEU and chrF over
  the evaluation; 0 to 100, as sacrebleu prints them.
- ``json_valid``: 1 when the prediction (or the inside of its ``` fence) parses as JSON.
- ``json_schema_valid``: 1 when the prediction (or its fence) is JSON valid against the option ``schema`` (a JSON
  Schema, checked by ``jsonschema``).
- ``label_accuracy``: 1 when the prediction's labels equal the reference's (a label, a JSON list of labels, or
  AI_CLASSIFY's ``{"labels": [...]}``, either side), compared as sets, trimmed and case-folded.
- ``sql_match``: execution match in a sandbox (:mod:`.sqlmatch`).
- ``completion_loss``: the model's mean cross-entropy (nats per token) on the reference completion given the
  prompt: perplexity is ``exp`` of it. Needs no generation; lower is better.
- ``preference_accuracy``: 1 when the model's completion log-probability (summed over its tokens) of the
  reference, the chosen answer, exceeds that of the query's column ``rejected``, else 0 (DPO's reward accuracy
  against a zero reference). Needs no generation.

User metrics are SQL expressions over ``id, prompt, completion, prediction`` (:mod:`.usermetrics`).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from ..ml.models import LoadedModel
    from .sqlmatch import Sandbox


#: What a metric scores from: the texts alone, sql_match's sandbox (built once per evaluation, only when a wanted
#: metric needs it), the model itself, or DuckDB running a user metric's SQL.
TEXTS, SANDBOX, MODEL, SQL = "texts", "sandbox", "model", "sql"
#: The texts and the evaluation's option ``schema`` (json_schema_valid).
SCHEMA = "schema"


@dataclass(frozen=True)
class Scoring:
    """One model's answers on an evaluation's rows, and what a metric may need to score them."""

    ids: Sequence[str]
    prompts: Sequence[str]
    refs: Sequence[str]
    preds: Sequence[str | None]
    rejected: Sequence[str | None] = ()  # preference_accuracy's: the rejected completion of each row
    model_name: str = ""
    model: LoadedModel | None = None  # metrics that need MODEL
    adapter: str | None = None
    sandbox: Sandbox | None = None  # sql_match's (SANDBOX)
    cur: Any = None  # a cursor of the session's engine (SQL)
    schema: dict | None = None  # the option schema (SCHEMA)


@dataclass(frozen=True)
class Metric:
    """One metric: its name, its scorer (a :class:`Scoring` to one score per row, None where there is none), what
    the scorer needs (:data:`TEXTS`, :data:`SANDBOX`, :data:`MODEL`, :data:`SQL`), and how to compare it:
    ``binary`` (0/1 per row: McNemar's test), ``higher_is_better``, ``corpus`` (``"mean"``, or ``"bleu"``/
    ``"chrf"``: sacrebleu's corpus score from summed statistics); ``default``: in the default set."""

    name: str
    score: Callable[[Scoring], list[float | None]]
    needs: str = TEXTS
    binary: bool = False
    higher_is_better: bool = True
    corpus: str = "mean"
    default: bool = False
    sql: str | None = None  # a user metric's SQL expression


_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_FENCE = re.compile(r"```[ \t]*[A-Za-z]*[ \t]*\n?(.*?)(?:```|$)", re.S)


def normalize(text: str | None) -> str:
    """Lower-cased, punctuation removed, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", (text or "").lower()).split())


def exact_match(pred: str, ref: str) -> float:
    return float(pred.strip() == ref.strip())


def normalized_match(pred: str, ref: str) -> float:
    return float(normalize(pred) == normalize(ref))


def contains(pred: str, ref: str) -> float:
    return float(f" {normalize(ref)} " in f" {normalize(pred)} ")


def token_f1(pred: str, ref: str) -> float:
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def json_valid(pred: str, ref: str) -> float:
    for text in (pred, *(m.group(1) for m in _FENCE.finditer(pred))):
        try:
            json.loads(text)
            return 1.0
        except ValueError:
            continue
    return 0.0


def _json_values(pred: str) -> list[Any]:
    """The JSON values the prediction holds: itself, or the inside of its ``` fences."""
    out = []
    for text in (pred, *(m.group(1) for m in _FENCE.finditer(pred))):
        try:
            out.append(json.loads(text))
        except ValueError:
            continue
    return out


def _json_schema_valid(s: Scoring) -> list[float | None]:
    import jsonschema

    validator = jsonschema.validators.validator_for(s.schema)(s.schema)
    return [float(any(validator.is_valid(v) for v in _json_values(p or ""))) for p in s.preds]


def labels(text: str) -> frozenset[str]:
    """The labels of an answer or a reference: AI_CLASSIFY's ``{"labels": [...]}``, a JSON list, or one label."""
    value: Any = text
    try:
        value = json.loads(text)
    except ValueError:
        pass
    if isinstance(value, dict) and isinstance(value.get("labels"), list):
        value = value["labels"]
    items = value if isinstance(value, list) else [value]
    return frozenset(str(v).strip().casefold() for v in items if v is not None)


def label_accuracy(pred: str, ref: str) -> float:
    return float(labels(pred) == labels(ref))


def _rouge_l(preds: Sequence[str], refs: Sequence[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]


def _sacre(name: str, sentence: bool = False) -> Any:
    """sacrebleu's metric object: sentence BLEU uses effective order (as ``sacrebleu.sentence_bleu``), corpus BLEU
    the plain default (as ``sacrebleu.corpus_bleu`` and the command line)."""
    from sacrebleu.metrics import BLEU, CHRF

    return (BLEU(effective_order=sentence)) if name == "bleu" else CHRF()


def _sentence(name: str, preds: Sequence[str], refs: Sequence[str]) -> list[float]:
    m = _sacre(name, sentence=True)
    return [m.sentence_score(p, [r]).score for p, r in zip(preds, refs)]


def _rows(fn: Callable[[str, str], float]) -> Callable[[Scoring], list[float | None]]:
    """A scorer from a per-row function of (prediction, reference); a missing prediction is the empty string."""
    return lambda s: [fn(p or "", r) for p, r in zip(s.preds, s.refs)]


def _sql_match(s: Scoring) -> list[float | None]:
    return [float(s.sandbox.match(p, r)) for p, r in zip(s.preds, s.refs)]


def _preference_accuracy(s: Scoring) -> list[float | None]:
    """1 where the model's completion log-probability of the reference (chosen) exceeds the rejected one's."""
    from ..ml import likelihood

    chosen = likelihood.completion_logprobs(s.model, list(zip(s.prompts, s.refs)), s.adapter)
    rejected = likelihood.completion_logprobs(s.model, [(p, r or "") for p, r in zip(s.prompts, s.rejected)],
                                              s.adapter)
    return [None if c is None or r is None or rej is None else float(c > r)
            for c, r, rej in zip(chosen, rejected, s.rejected)]


def _completion_loss(s: Scoring) -> list[float | None]:
    from ..ml import likelihood

    return likelihood.completion_losses(s.model, list(zip(s.prompts, s.refs)), s.adapter)


#: The built-in metrics, in the order the default set and ``finetune_evaluation(id)``'s columns list them. Adding a
#: metric is one entry here: EVALUATE's name check, the scoring, the stored rows (a MAP of scores: no migration)
#: and the columns of ``finetune_evaluation(id)`` all read this table.
BUILTIN: dict[str, Metric] = {m.name: m for m in [
    Metric("exact_match", _rows(exact_match), binary=True, default=True),
    Metric("normalized_match", _rows(normalized_match), binary=True, default=True),
    Metric("contains", _rows(contains), binary=True),
    Metric("token_f1", _rows(token_f1), default=True),
    Metric("rouge_l", lambda s: _rouge_l([p or "" for p in s.preds], s.refs), default=True),
    Metric("bleu", lambda s: _sentence("bleu", [p or "" for p in s.preds], s.refs), corpus="bleu", default=True),
    Metric("chrf", lambda s: _sentence("chrf", [p or "" for p in s.preds], s.refs), corpus="chrf", default=True),
    Metric("json_valid", _rows(json_valid), binary=True),
    Metric("json_schema_valid", _json_schema_valid, needs=SCHEMA, binary=True),
    Metric("label_accuracy", _rows(label_accuracy), binary=True),
    Metric("sql_match", _sql_match, needs=SANDBOX, binary=True),
    Metric("completion_loss", _completion_loss, needs=MODEL, higher_is_better=False, default=True),
    Metric("preference_accuracy", _preference_accuracy, needs=MODEL, binary=True),
]}
DEFAULT = [m.name for m in BUILTIN.values() if m.default]


def text_scores(name: str, preds: Sequence[str | None], refs: Sequence[str]) -> list[float | None]:
    """The per-row scores of a built-in metric that needs only the texts."""
    metric = BUILTIN[name]
    if metric.needs != TEXTS:
        raise KeyError(f"{name} needs {metric.needs}, not only the texts")
    return metric.score(Scoring(ids=[], prompts=[], refs=refs, preds=preds))


# ------------------------------------------------------------------------------------------------- corpus scores


def corpus_stats(metric: Metric, values: Sequence[float | None], preds: Sequence[str | None] = (),
                 refs: Sequence[str] = ()) -> np.ndarray:
    """Per-row statistics whose sum over any set of rows gives the corpus score (:func:`corpus_from_stats`).

    For a mean metric: (value, 1), with (0, 0) where the value is missing; for bleu and chrf, sacrebleu's n-gram
    statistics. Resampling rows of this array is what the paired bootstrap does.
    """
    if metric.corpus == "mean":
        return np.array([(0.0, 0.0) if v is None else (float(v), 1.0) for v in values], dtype=float).reshape(-1, 2)
    m = _sacre(metric.corpus)
    stats = m._extract_corpus_statistics([p or "" for p in preds], [list(refs)])
    return np.array(stats, dtype=float)


def corpus_from_stats(metric: Metric, summed: np.ndarray) -> float | None:
    """The corpus score from the column sums of :func:`corpus_stats` rows (None when no row has a value)."""
    if metric.corpus == "mean":
        return float(summed[0] / summed[1]) if summed[1] else None
    m = _sacre(metric.corpus)
    return float(m._compute_score_from_stats([int(round(x)) for x in summed]).score)


def corpus_score(metric: Metric, values: Sequence[float | None], preds: Sequence[str | None] = (),
                 refs: Sequence[str] = ()) -> float | None:
    """A metric's score over the whole evaluation."""
    stats = corpus_stats(metric, values, preds, refs)
    return corpus_from_stats(metric, stats.sum(axis=0)) if len(stats) else None
