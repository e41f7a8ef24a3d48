"""Preference tuning as losses inside the one training loop (``training.train``): DPO on pairs (prompt, chosen,
rejected) and KTO on thumbs up/down (prompt, completion, label), computed as TRL's DPOTrainer and KTOTrainer
compute them (tests/test_preference.py compares the first steps' losses with TRL's).

- Log-probabilities are completion-only: a sequence's is the sum over its completion tokens, the prompt in the
  chat template as SFT tokenizes it (``data.encode_pairs``).
- A dpo pair is one training unit: chosen and rejected sequences side by side in one packed row, so both go
  through one forward (position ids restart at each sequence, which keeps each to itself), and the packer, the
  micro-batches and the CPU lanes treat the pair as SFT treats a row.
- The reference policy is where training starts: the base model (LoRA B is 0, and the adapter is switched off
  with peft's ``disable_adapter``) or a fine-tuned model's adapter. Its log-probabilities are computed once per
  sequence before the first step (TRL's ``precompute_ref_log_probs``), in the run's compute dtype, so no second
  model is kept and no step pays a reference forward; a resumed job recomputes them from the same start.
- The passes without a gradient (reference, KL, validation) share a CPU's cores as the step's micro-batches do
  (``lanes``), not as intra-op threads of one forward, which wait at every operation on a loaded machine.
- KTO's KL estimate: each row is paired with another row's completion (rotated by one within each run of
  ``batch_size`` rows of the snapshot, as TRL builds its KL dataset); per batch, the mean log-ratio of those
  mismatched sequences under the policy and the reference, clamped at 0, detached.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..options import TrainingOptions
from .data import IGNORE, TokenStats, encode_pairs, fit_window

#: The metrics a step records, named as TRL logs them (validation's with an ``eval_`` prefix).
DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected")
KTO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl")


@dataclass
class PreferenceExample:
    """One training unit: its sequences side by side in ``input_ids`` (dpo: prompt + chosen, then prompt +
    rejected; kto: prompt + completion), ``labels`` IGNORE on the prompts, ``starts`` where each sequence begins.
    ``ref``: each sequence's reference log-probability (set before training); kto: ``desirable`` (the label),
    ``kl_ids``/``kl_labels`` (the prompt with another row's completion), ``ref_kl``, and ``kl`` (the estimate of
    its batch, set before each step)."""

    input_ids: list[int]
    labels: list[int]
    starts: tuple[int, ...]
    desirable: bool = True
    kl_ids: list[int] | None = None
    kl_labels: list[int] | None = None
    ref: tuple[float, ...] = ()
    ref_kl: float = 0.0
    kl: float = 0.0

    @property
    def n_trained(self) -> int:
        """The loop averages a step's loss over this: a preference loss is a mean over rows, not tokens."""
        return 1


def _window(p_ids: list[int], c_ids: list[int], max_seq_length: int, stats: TokenStats) -> tuple[list[int], list[int]] | None:
    """A sequence fitted to ``max_seq_length`` as (ids, labels), or None with nothing to learn."""
    n, truncated, learnable = fit_window(len(p_ids), len(c_ids), max_seq_length)
    stats.truncated += truncated
    if not learnable:
        return None
    ids = (p_ids + c_ids)[:n]
    return ids, [IGNORE] * len(p_ids) + ids[len(p_ids):]


def tokenize(tokenizer: Any, rows: Iterable[tuple[str, str, str | None, bool | None]], method: str,
             max_seq_length: int, batch_size: int, stats: TokenStats) -> list[PreferenceExample]:
    """Rows (prompt, completion or chosen, rejected, label) as training units, in the snapshot's order; a row
    either of whose sequences has nothing to learn inside ``max_seq_length`` is dropped (counted)."""
    rows = list(rows)
    enc_p, enc_c = encode_pairs(tokenizer, [(p, c) for p, c, _, _ in rows])
    if method == "dpo":
        _, enc_r = encode_pairs(tokenizer, [(p, r) for p, _, r, _ in rows])
    out: list[PreferenceExample] = []
    kept: list[int] = []
    for i, (p_ids, c_ids) in enumerate(zip(enc_p, enc_c)):
        first = _window(p_ids, c_ids, max_seq_length, stats)
        second = _window(p_ids, enc_r[i], max_seq_length, stats) if method == "dpo" else None
        if first is None or (method == "dpo" and second is None):
            stats.dropped += 1
            continue
        ids, labels = first
        starts: tuple[int, ...] = (0,)
        if second is not None:
            starts = (0, len(ids))
            ids, labels = ids + second[0], labels + second[1]
        stats.examples += 1
        stats.tokens += len(ids)
        out.append(PreferenceExample(ids, labels, starts, desirable=bool(rows[i][3]) if method == "kto" else True))
        kept.append(i)
    if method == "kto":  # TRL's KL dataset: completions rotated by one within each run of batch_size rows
        for lo in range(0, len(out), batch_size):
            chunk = list(range(lo, min(lo + batch_size, len(out))))
            for k, j in enumerate(chunk):
                other = kept[chunk[k - 1]]
                kl = _window(enc_p[kept[j]], enc_c[other], max_seq_length, TokenStats())
                if kl is None:  # the mismatched completion falls outside the window: the row's own prompt fills it
                    kl = (out[j].input_ids, out[j].labels)
                out[j].kl_ids, out[j].kl_labels = kl
    return out


def tokenize_reader(tokenizer: Any, reader: Any, method: str, max_seq_length: int, batch_size: int,
                    stats: TokenStats) -> list[PreferenceExample]:
    """:func:`tokenize` over an Arrow reader of the job's rows (``catalog.jobs.read_rows``)."""
    rows: list[tuple[Any, ...]] = []
    for batch in reader:
        cols = [batch.column(c).to_pylist() for c in ("prompt", "completion", "rejected", "label")]
        rows.extend(zip(*cols))
    return tokenize(tokenizer, rows, method, max_seq_length, batch_size, stats)


def collate(examples: Sequence[PreferenceExample], rows: list[list[int]], pad_id: int) -> dict[str, Any]:
    """Packed rows of units (example indices per row), right-padded: input ids, labels, position ids restarting at
    every sequence, and per sequence (in unit order, a dpo unit's chosen before its rejected) its index on each
    of its positions (``seq``, -1 elsewhere), its reference log-probability, label and KL estimate."""
    import torch

    lengths = [sum(len(examples[i].input_ids) for i in row) for row in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    seq = torch.full((len(rows), width), -1, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    ref, desirable, kl = [], [], []
    for k, row in enumerate(rows):
        at = 0
        for i in row:
            e = examples[i]
            n = len(e.input_ids)
            ids[k, at:at + n] = torch.tensor(e.input_ids)
            labels[k, at:at + n] = torch.tensor(e.labels)
            bounds = list(e.starts) + [n]
            for s in range(len(e.starts)):
                a, b = bounds[s], bounds[s + 1]
                positions[k, at + a:at + b] = torch.arange(b - a)
                seq[k, at + a:at + b] = len(ref)
                ref.append(e.ref[s] if e.ref else 0.0)
                desirable.append(e.desirable)
                kl.append(e.kl)
            at += n
        mask[k, :at] = 1
        positions[k, at:] = torch.arange(width - at) + (positions[k, at - 1] + 1 if at else 0)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask, "seq": seq,
            "ref": torch.tensor(ref, dtype=torch.float32), "desirable": torch.tensor(desirable),
            "kl": torch.tensor(kl, dtype=torch.float32)}


def sequence_logps(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Each sequence's completion log-probability (sum over its completion tokens) and completion token count."""
    import torch
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                 use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep]).float()
    token_logps = -F.cross_entropy(logits, labels[keep], reduction="none")
    which = batch["seq"][:, 1:][keep]
    n = len(batch["ref"])
    logps = torch.zeros(n, dtype=torch.float32, device=token_logps.device).index_add(0, which, token_logps)
    counts = torch.zeros(n, dtype=torch.float32, device=token_logps.device).index_add(
        0, which, torch.ones_like(token_logps))
    return logps, counts


class Recorder:
    """A step's metrics summed over its micro-batches (lanes run them in threads), then averaged (:meth:`drain`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def add(self, name: str, total: float, count: float) -> None:
        with self._lock:
            s = self._sums[name]
            s[0] += total
            s[1] += count

    def drain(self, prefix: str = "") -> dict[str, float]:
        with self._lock:
            out = {prefix + k: s[0] / s[1] for k, s in self._sums.items() if s[1] > 0}
            self._sums.clear()
        if prefix + "rewards/chosen" in out and prefix + "rewards/rejected" in out \
                and prefix + "rewards/margins" not in out:  # kto: the difference of the means, as TRL
            out[prefix + "rewards/margins"] = out[prefix + "rewards/chosen"] - out[prefix + "rewards/rejected"]
        return out


class Preference:
    """The dpo or kto objective of ``training.train``: reference log-probabilities before the first step, the
    loss of a micro-batch, KTO's KL estimate before each step, the validation loss, and the step's metrics."""

    def __init__(self, opts: TrainingOptions):
        self.method, self.beta, self.loss_type = opts.method, opts.beta, opts.loss_type
        self.weights = (opts.desirable_weight, opts.undesirable_weight)
        self.batch_size = opts.batch_size
        self.recorder = Recorder()

    collate = staticmethod(collate)

    # ---------------------------------------------------------------------------------------------- the loss

    def losses(self, logps: Any, counts: Any, batch: dict[str, Any], record: Recorder | None) -> Any:
        """Per-unit losses of a micro-batch's sequences, as TRL's DPOTrainer / KTOTrainer compute them."""
        import torch
        import torch.nn.functional as F

        ratios = logps - batch["ref"]
        if self.method == "dpo":
            chosen, rejected = ratios[0::2], ratios[1::2]
            if self.loss_type == "ipo":  # log-ratios averaged per completion token, as TRL's ipo
                delta = chosen / counts[0::2].clamp(min=1.0) - rejected / counts[1::2].clamp(min=1.0)
                losses = (delta - 1 / (2 * self.beta)) ** 2
            else:
                losses = -F.logsigmoid(self.beta * (chosen - rejected))
            if record is not None:
                c, r = (self.beta * chosen).detach(), (self.beta * rejected).detach()
                n = float(len(c))
                for name, value in (("rewards/chosen", c.sum()), ("rewards/rejected", r.sum()),
                                    ("rewards/accuracies", (c > r).float().sum()), ("rewards/margins", (c - r).sum()),
                                    ("logps/chosen", logps[0::2].detach().sum()),
                                    ("logps/rejected", logps[1::2].detach().sum())):
                    record.add(name, float(value), n)
            return losses
        good, kl = batch["desirable"].to(ratios.device), batch["kl"].to(ratios.device)
        losses = torch.where(good, self.weights[0] * (1 - torch.sigmoid(self.beta * (ratios - kl))),
                             self.weights[1] * (1 - torch.sigmoid(self.beta * (kl - ratios))))
        if record is not None:
            rewards = (self.beta * ratios).detach()
            for side, which in (("chosen", good), ("rejected", ~good)):
                k = float(which.sum())
                record.add(f"rewards/{side}", float(rewards[which].sum()), k)
                record.add(f"logps/{side}", float(logps.detach()[which].sum()), k)
        return losses

    def loss_fn(self, model: Any) -> Callable[[dict[str, Any]], tuple[Any, int]]:
        """A micro-batch to (summed loss of its units, how many units): the loop divides by the step's units."""
        def loss(batch: dict[str, Any]) -> tuple[Any, int]:
            logps, counts = sequence_logps(model, batch)
            out = self.losses(logps, counts, batch, self.recorder)
            return out.sum(), len(out)
        return loss

    # ------------------------------------------------------------------------------------- reference and KL

    def prepare(self, model: Any, sets: Sequence[Sequence[PreferenceExample]], pad_id: int, device: str,
                autocast: Callable[[], Any], reference: dict[str, Any] | None, budget: int | None) -> None:
        """Every sequence's reference log-probability, before the first step: under the base model (the adapter
        switched off) or with the ``reference`` adapter weights in place (put back after)."""
        import torch
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        was_training = model.training
        model.eval()
        saved = None
        if reference is not None:
            saved = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
            set_peft_model_state_dict(model, {k: v.to(device) for k, v in reference.items()})
        try:
            with model.disable_adapter() if reference is None else _nothing():
                seen: set[int] = set()
                for examples in sets:
                    if id(examples) in seen:
                        continue
                    seen.add(id(examples))

                    def logps_of(part: list[int], examples: Sequence[PreferenceExample] = examples) -> list[float]:
                        with autocast():
                            logps, _ = sequence_logps(model, _to(collate(examples, [[i] for i in part], pad_id),
                                                                 device))
                        return logps.tolist()

                    parts = _parts(examples, range(len(examples)), budget)
                    for part, values in zip(parts, _no_grad_map(logps_of, parts, device)):
                        at = 0
                        for i in part:
                            n = len(examples[i].starts)
                            examples[i].ref = tuple(values[at:at + n])
                            at += n
                    if self.method == "kto":
                        parts = _parts(examples, range(len(examples)), budget, kl=True)
                        for part, values in zip(parts, _no_grad_map(
                                lambda part, examples=examples: _kl_logps(model, examples, part, pad_id, device,
                                                                          autocast), parts, device)):
                            for i, v in zip(part, values):
                                examples[i].ref_kl = v
        finally:
            if saved is not None:
                set_peft_model_state_dict(model, saved)
            model.train(was_training)

    def before_step(self, model: Any, examples: Sequence[PreferenceExample], group: list[list[list[int]]],
                    pad_id: int, device: str, autocast: Callable[[], Any], budget: int | None) -> None:
        """kto: each batch's KL estimate (policy now, no gradient), set on its units; nothing for dpo."""
        if self.method != "kto":
            return
        for rows in group:
            self._estimate_kl(model, examples, [i for row in rows for i in row], pad_id, device, autocast, budget)

    def _estimate_kl(self, model: Any, examples: Sequence[PreferenceExample], members: list[int], pad_id: int,
                     device: str, autocast: Callable[[], Any], budget: int | None) -> float:
        total = 0.0
        parts = _parts(examples, members, budget, kl=True)
        for part, values in zip(parts, _no_grad_map(
                lambda part: _kl_logps(model, examples, part, pad_id, device, autocast), parts, device)):
            total += sum(v - examples[i].ref_kl for v, i in zip(values, part))
        kl = max(0.0, total / max(1, len(members)))
        for i in members:
            examples[i].kl = kl
        self.recorder.add("kl", kl, 1.0)
        return kl

    # ----------------------------------------------------------------------------------------- validation

    def evaluate(self, model: Any, examples: Sequence[PreferenceExample], batch_size: int, pad_id: int,
                 device: str, autocast: Callable[[], Any], budget: int | None) -> tuple[float | None, dict[str, float]]:
        """The method's mean loss over ``examples`` (kto: KL per run of ``batch_size`` rows, as TRL's evaluation
        batches) and the validation metrics, ``eval_``-prefixed."""
        if not examples:
            return None, {}
        model.eval()
        record = Recorder()
        total = 0.0

        def loss_of(part: list[int]) -> float:
            batch = _to(collate(examples, [[i] for i in part], pad_id), device)
            with autocast():
                logps, counts = sequence_logps(model, batch)
            return float(self.losses(logps, counts, batch, record).sum())

        try:
            if self.method == "kto":  # each run of batch_size rows: its KL estimate, then its losses
                for lo in range(0, len(examples), batch_size):
                    members = list(range(lo, min(lo + batch_size, len(examples))))
                    record.add("kl", self._estimate_kl(model, examples, members, pad_id, device, autocast,
                                                       budget), 1.0)
                    total += sum(_no_grad_map(loss_of, _parts(examples, members, budget), device))
            else:  # a pair's loss is its own: every pair at once
                total = sum(_no_grad_map(loss_of, _parts(examples, range(len(examples)), budget), device))
        finally:
            model.train()
            self.recorder.drain()  # the KL estimates of evaluation are not the step's
        return total / len(examples), record.drain("eval_")

    def step_metrics(self) -> dict[str, float]:
        return self.recorder.drain()


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def _parts(examples: Sequence[PreferenceExample], members: Iterable[int], budget: int | None,
           kl: bool = False) -> list[list[int]]:
    """``members`` in consecutive runs of at most ``budget`` padded positions (one unit a row; None: one run)."""
    parts: list[list[int]] = [[]]
    width = 0
    for i in members:
        n = len(examples[i].kl_ids or []) if kl else len(examples[i].input_ids)
        if budget is not None and parts[-1] and (len(parts[-1]) + 1) * max(width, n) > budget:
            parts.append([])
            width = 0
        parts[-1].append(i)
        width = max(width, n)
    return [p for p in parts if p]


def _kl_logps(model: Any, examples: Sequence[PreferenceExample], part: list[int], pad_id: int, device: str,
              autocast: Callable[[], Any]) -> list[float]:
    """The completion log-probabilities of units' KL sequences (prompt with another row's completion)."""
    kl = [PreferenceExample(examples[i].kl_ids or [], examples[i].kl_labels or [], (0,)) for i in part]
    with autocast():
        logps, _ = sequence_logps(model, _to(collate(kl, [[k] for k in range(len(kl))], pad_id), device))
    return logps.tolist()


def _no_grad_map(fn: Callable[[list[int]], Any], parts: list[list[int]], device: str) -> list[Any]:
    """``fn(part)`` for every part without a gradient, the results in part order. On a CPU the parts are shared
    by lanes, one per torch thread, each at one intra-op thread (``lanes``), as the training step's micro-batches
    are; each part is computed whole by one lane, so only the rounding of its matrix products can depend on that."""
    import torch

    from . import lanes

    def run(share: list[int]) -> list[tuple[int, Any]]:
        with torch.no_grad():  # grad mode is per thread: set in the lane that runs the forward
            return [(j, fn(parts[j])) for j in share]

    size = lanes.lane_count(torch.get_num_threads() if device == "cpu" else 1, len(parts))
    pool = lanes.Lanes(size)
    try:
        sizes = [len(p) for p in parts]
        done = dict(pair for share in pool.map(run, lanes.assign(sizes, size)) for pair in share)
    finally:
        pool.close()
    return [done[j] for j in range(len(parts))]


def objective(opts: TrainingOptions) -> Preference | None:
    """The training objective of a job's method: None for sft (the loop's own completion loss)."""
    return None if opts.method == "sft" else Preference(opts)

