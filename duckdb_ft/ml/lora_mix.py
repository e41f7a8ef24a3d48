"""Rows of several LoRA adapters of one base in one batch, with two matmuls per adapted layer.

peft's mixed-adapter batches (``adapter_names=``) loop in every adapted Linear over the batch's adapters: a
sub-batch gathered by a Python list of row indices, its two LoRA matmuls, and a scatter back, rebuilt on every
forward. At decode time (one token per row) that loop is most of the step: on the default model with 4 adapters on
every linear projection a 64-row decode step cost 1.7x a one-adapter step (``benchmarks/README.md``).

Here the batch's adapters are stacked once per call: for each adapted Linear, ``A`` is every adapter's down
projection one above the other (``(sum of ranks, in)``) and ``B`` their up projections side by side, each scaled by
its adapter's ``alpha / r``; a 0/1 mask of ``(rows, sum of ranks)`` keeps, for each row, only its own adapter's
rank columns. The layer then computes ``base(x) + ((x @ A.T) * mask) @ B.T``: the same sum as the row's own
adapter alone (the other adapters' columns contribute exact zeros; rows of the base model get exactly
``base(x)``), as two dense matmuls whatever the number of adapters.

Only plain LoRA on ``nn.Linear`` layers is stacked (no DoRA or other variant, no LoRA bias, no embedding or conv
LoRA, nothing merged); anything else falls back to peft's ``adapter_names`` path.
"""

from __future__ import annotations

from typing import Any, Sequence

BASE = "__base__"


class Mixer:
    """The adapters of one batch, ready for mixed forwards; ``kwargs(names)`` before each forward.

    Use as a context manager around the forwards: while it is open, every adapted Linear of ``model`` runs the
    stacked form (``stacked`` True), or the model is left to peft's ``adapter_names`` (``stacked`` False).
    """

    def __init__(self, model: Any, adapters: Sequence[str | None]):
        self.model = model
        self.adapters = [a or BASE for a in dict.fromkeys(adapters)]
        self.layers = _stack(model, self.adapters)
        self.stacked = self.layers is not None
        self._masks: dict[tuple, Any] = {}
        self._rows: Any = None

    def kwargs(self, names: Sequence[str | None]) -> dict[str, Any]:
        """The model's keyword arguments for a forward whose rows use adapters ``names`` (None: the base)."""
        names = [a or BASE for a in names]
        if not self.stacked:
            return {"adapter_names": names}
        import torch

        index = {a: k for k, a in enumerate(self.adapters)}
        self._rows = torch.tensor([index[a] for a in names])
        self._masks = {}
        return {}

    def _mask(self, owner: Any, x: Any) -> Any:
        """(rows, 1, sum of ranks) in ``x``'s dtype: 1 where the rank column belongs to the row's adapter."""
        key = id(owner)
        m = self._masks.get(key)
        if m is None:
            m = (self._rows.to(owner.device)[:, None] == owner[None, :]).to(x.dtype)[:, None, :]
            self._masks[key] = m
        return m if x.dim() == 3 else m[:, 0, :]

    def __enter__(self) -> "Mixer":
        if self.stacked:
            for module, a, b, owner in self.layers:
                module.forward = _forward(self, module, a, b, owner)
        return self

    def __exit__(self, *exc: Any) -> bool:
        if self.stacked:
            for module, *_ in self.layers:
                del module.forward  # the class's forward again
        return False


def _forward(mixer: Mixer, module: Any, a: Any, b: Any, owner: Any) -> Any:
    base = module.base_layer

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("adapter_names", None)
        out = base(x, *args, **kwargs)
        h = (x.to(a.dtype) @ a.T) * mixer._mask(owner, x)
        return out + (h @ b.T).to(out.dtype)

    return forward


def _stack(model: Any, adapters: Sequence[str]) -> list[tuple[Any, Any, Any, Any]] | None:
    """Per adapted Linear: (module, stacked A, stacked scaled B, adapter index of each rank column); None where
    some layer holding one of ``adapters`` is not plain LoRA on a Linear."""
    import torch

    try:
        from peft.tuners.lora.layer import Linear, LoraLayer
    except ImportError:
        return None
    wanted = [a for a in adapters if a != BASE]
    owners: dict[tuple, Any] = {}  # one owner tensor per rank layout, shared by the layers that have it
    out = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        present = [a for a in wanted if a in module.lora_A]
        if not present:
            continue
        if (type(module) is not Linear or not isinstance(module.base_layer, torch.nn.Linear)
                or getattr(module, "merged", False) or getattr(module, "fan_in_fan_out", False)
                or any(a in getattr(module, "lora_variant", {}) or module.lora_bias.get(a, False)
                       or module.lora_B[a].bias is not None for a in present)):
            return None
        a_w = torch.cat([module.lora_A[a].weight for a in present])
        b_w = torch.cat([module.lora_B[a].weight * module.scaling[a] for a in present], dim=1)
        layout = tuple((adapters.index(a), module.lora_A[a].weight.shape[0]) for a in present)
        if layout not in owners:
            owners[layout] = torch.cat([torch.full((r,), k, dtype=torch.long) for k, r in layout]).to(a_w.device)
        out.append((module, a_w, b_w, owners[layout]))
    return out
