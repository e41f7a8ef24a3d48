"""Paired comparison of two models on the same rows: wins/ties/losses, a bootstrap interval, and a test.

- Every metric gets a paired bootstrap: the rows are resampled with replacement (``samples`` times, seeded), the
  corpus score of each model is recomputed on the same resampled rows, and the 2.5th and 97.5th percentiles of
  the difference (B minus A) give a 95% interval. Its p-value is the null-shifted bootstrap test of Koehn (2004),
  as sacrebleu's ``--paired-bs``: the share of resampled differences at least as far from the observed one as the
  observed one is from 0.
- Metrics that are 0 or 1 per row (``exact_match``, ``sql_match``, boolean user metrics, ...) are tested with
  McNemar's exact test instead: under the null, the rows where only A is right and those where only B is right
  are equally likely, so their counts are a fair coin's (two-sided binomial p-value).

A difference is ``significant`` when p < 0.05; ``better`` then names the model that wins, else it is null.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .metrics import Metric, corpus_from_stats

ALPHA = 0.05


def mcnemar(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """(rows only A gets right, rows only B gets right, exact two-sided p-value) for paired 0/1 scores."""
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return only_a, only_b, 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return only_a, only_b, min(1.0, 2 * tail)


def bootstrap(metric: Metric, stats_a: np.ndarray, stats_b: np.ndarray, samples: int = 1000,
              seed: int = 0) -> tuple[float | None, float | None, float]:
    """(low, high, p) of the 95% paired bootstrap interval of corpus(B) - corpus(A), and its p-value."""
    n = len(stats_a)
    if n == 0:
        return None, None, 1.0
    observed = _diff(metric, stats_a.sum(axis=0), stats_b.sum(axis=0))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    sa, sb = stats_a[idx].sum(axis=1), stats_b[idx].sum(axis=1)  # (samples, k): statistics of each resample
    if metric.corpus == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            diffs = sb[:, 0] / sb[:, 1] - sa[:, 0] / sa[:, 1]
        diffs = diffs[np.isfinite(diffs)]
    else:
        diffs = np.array([_diff(metric, x, y) for x, y in zip(sa, sb)], dtype=float)
    if observed is None or not len(diffs):
        return None, None, 1.0
    low, high = np.percentile(diffs, [2.5, 97.5])
    p = (np.sum(np.abs(diffs - observed) >= abs(observed)) + 1) / (len(diffs) + 1)
    return float(low), float(high), float(min(1.0, p))


def interval(metric: Metric, stats: np.ndarray, samples: int = 1000, seed: int = 0) -> list[float] | None:
    """The 95% bootstrap interval of one model's corpus score ([low, high]; None without rows)."""
    n = len(stats)
    if n == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    summed = stats[idx].sum(axis=1)
    if metric.corpus == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = summed[:, 0] / summed[:, 1]
    else:
        scores = np.array([corpus_from_stats(metric, x) for x in summed], dtype=float)
    scores = scores[np.isfinite(scores)]
    return [float(x) for x in np.percentile(scores, [2.5, 97.5])] if len(scores) else None


def _diff(metric: Metric, summed_a: np.ndarray, summed_b: np.ndarray) -> float | None:
    a, b = corpus_from_stats(metric, summed_a), corpus_from_stats(metric, summed_b)
    return None if a is None or b is None else b - a


def compare(metric: Metric, name_a: str, name_b: str, values_a: Sequence[float | None],
            values_b: Sequence[float | None], stats_a: np.ndarray, stats_b: np.ndarray, *, samples: int = 1000,
            seed: int = 0) -> dict[str, Any]:
    """One metric, model A against model B on the same rows: the comparison entry of EVALUATE's summary.

    ``values_*`` are the per-row scores; ``stats_*`` the per-row corpus statistics (:func:`metrics.corpus_stats`).
    Rows where either model has no score are left out of wins/ties/losses, the bootstrap and the test.
    """
    both = [i for i, (x, y) in enumerate(zip(values_a, values_b)) if x is not None and y is not None]
    sign = 1 if metric.higher_is_better else -1
    wins = sum(1 for i in both if sign * (values_b[i] - values_a[i]) > 1e-12)
    losses = sum(1 for i in both if sign * (values_a[i] - values_b[i]) > 1e-12)
    sa, sb = stats_a[both], stats_b[both]
    score_a = corpus_from_stats(metric, sa.sum(axis=0)) if both else None
    score_b = corpus_from_stats(metric, sb.sum(axis=0)) if both else None
    low, high, p_boot = bootstrap(metric, sa, sb, samples, seed)
    entry: dict[str, Any] = {
        "metric": metric.name, "a": name_a, "b": name_b, "a_score": score_a, "b_score": score_b,
        "difference": None if score_a is None or score_b is None else score_b - score_a,
        "wins": wins, "ties": len(both) - wins - losses, "losses": losses, "rows": len(both),
        "ci_low": low, "ci_high": high,
    }
    if metric.binary:
        only_a, only_b, p = mcnemar([values_a[i] for i in both], [values_b[i] for i in both])
        entry.update(test="mcnemar", p_value=p)
    else:
        entry.update(test="paired_bootstrap", p_value=p_boot)
    entry["significant"] = bool(entry["p_value"] < ALPHA and entry["difference"])
    better = None
    if entry["significant"]:
        b_wins = entry["difference"] > 0 if metric.higher_is_better else entry["difference"] < 0
        better = name_b if b_wins else name_a
    entry["better"] = better
    return entry
