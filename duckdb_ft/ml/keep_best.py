"""Which adapter a job keeps, and when it stops: the best evaluation's adapter (``keep_best``, as transformers'
``load_best_model_at_end``) and early stopping after ``early_stopping_patience`` evaluations without a better
validation loss.

Pure bookkeeping over the evaluations the training loop makes; its state travels in the job's checkpoint as tensors
and plain values, so a resumed job keeps its best adapter and its count.
"""

from __future__ import annotations

from typing import Any, Callable


class Selection:
    """The best validation loss seen, its step and (with ``keep_best``) a copy of its adapter weights."""

    def __init__(self, keep_best: bool, patience: int):
        self.keep_best, self.patience = keep_best, patience
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.best_adapter: dict[str, Any] | None = None
        self.since_best = 0  # evaluations since the best one
        self.stopped_early = False

    def observe(self, step: int, loss: float | None, adapter: Callable[[], dict[str, Any]]) -> bool:
        """Record an evaluation at ``step``; True when training should stop early."""
        if loss is None:
            return False
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.best_step, self.since_best = loss, step, 0
            if self.keep_best:  # a copy on the CPU: the live weights keep training
                self.best_adapter = {k: v.detach().to("cpu", copy=True) for k, v in adapter().items()}
            return False
        self.since_best += 1
        if self.patience and self.since_best >= self.patience:
            self.stopped_early = True
        return self.stopped_early

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (tensors and plain values: loadable with ``weights_only``)."""
        return {"best_loss": self.best_loss, "best_step": self.best_step, "since_best": self.since_best,
                "best_adapter": self.best_adapter}

    def load(self, state: dict[str, Any] | None) -> None:
        if state:
            self.best_loss, self.best_step = state["best_loss"], state["best_step"]
            self.since_best, self.best_adapter = state["since_best"], state["best_adapter"]
