"""The training step's decoder pieces under autocast, computed with fewer passes, casts and saved tensors.

Each is exact up to rounding (tests/test_fused.py compares each with the transformers + peft path it replaces) and
applies to one training module tree only, for the length of a run (``prepared``): the cached model COMPLETE uses
keeps its own modules and float32 weights, and nothing changes outside autocast (evaluation runs in float32).

- ``ComputeWeights``: autocast keeps the low-precision cast of a weight only for leaf tensors that require grad, so
  every forward cast each frozen float32 base weight to bf16 again (4 bytes read and 2 written per weight) and kept
  the copy for the backward pass. The training tree's linear layers multiply by a bf16 copy made once instead (the
  same values: the same round-to-nearest cast); the float32 tensors are swapped back in for evaluation.
- ``rms_norm``: a Llama-style RMSNorm in float32 whose output is returned in the compute dtype, the dtype every
  consumer (the projections) casts it to; it keeps its float32 input and the inverse norms for backward, where the
  transformers module keeps its input, the normalized copy and every intermediate (2 float32 copies), and each of
  q, k, v (or gate and up) cast the same output again.
- ``lora_linear``: peft's LoRA linear (``base(x) + B(A(dropout(x))) · scaling``) in one autograd node that keeps
  the input (shared by q, k and v), the dropout mask and the rank-r product, and redoes the masked input in the
  backward pass; peft's path keeps the dropped input as well, in both float32 and bf16.
- ``silu_mul``: ``silu(gate) · up`` keeping gate and up only (not silu(gate) as well), with torch's fused
  ``silu_backward``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F

NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}  # weight * x / rms(x), all the same
MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}  # down(act(gate(x)) * up(x))
ATTENTIONS = {"LlamaAttention"}  # q, k, v, rotary, attention, o (no per-head norms, no sliding window)


class ComputeWeights:
    """The frozen float32 weights of ``model``'s linear layers, with a copy of each in ``dtype`` (tied weights:
    one copy); ``use(True)`` puts the copies in the modules, ``use(False)`` the originals back."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        self.swaps: list[tuple[torch.nn.Module, Any, Any]] = []
        copies: dict[int, Any] = {}
        for module in model.modules():
            w = module._parameters.get("weight") if isinstance(module, torch.nn.Linear) else None
            if w is None or w.requires_grad or w.dtype != torch.float32 or w.device.type == "meta":
                continue
            if id(w) not in copies:
                copies[id(w)] = torch.nn.Parameter(w.detach().to(dtype), requires_grad=False)
            self.swaps.append((module, w, copies[id(w)]))

    def use(self, copies: bool) -> None:
        for module, original, copy in self.swaps:
            module._parameters["weight"] = copy if copies else original

    @contextlib.contextmanager
    def originals(self) -> Iterator[None]:
        """The float32 weights in place for a while (evaluation)."""
        self.use(False)
        try:
            yield
        finally:
            self.use(True)


class _RMSNorm(torch.autograd.Function):
    """(x / rms(x) · weight) in float32, returned in ``dtype``; the weight is frozen."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
        out = (xf * rstd).mul_(weight.float()).to(dtype)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, rstd = ctx.saved_tensors
        g = grad.float() * weight.float()
        xhat = x.float() * rstd
        dot = (g * xhat).mean(-1, keepdim=True)
        return g.sub_(xhat.mul_(dot)).mul_(rstd).to(x.dtype), None, None, None


def rms_norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    """A Llama-style RMSNorm's forward: the fused path under autocast, the module's own elsewhere."""
    if not torch.is_autocast_enabled(x.device.type):
        return type(module).forward(module, x)
    return _RMSNorm.apply(x, module.weight, module.variance_epsilon, torch.get_autocast_dtype(x.device.type))


class _SiluMul(torch.autograd.Function):
    """silu(gate) · up in the inputs' dtype, as autocast's eager path computes it; keeps gate and up only (silu(gate)
    is recomputed in backward), and the gate's gradient comes from torch's fused ``silu_backward`` (one pass where
    the chain rule written out in float32 took a dozen, each a full-size temporary)."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        gate, up = ctx.saved_tensors
        grad = grad.to(up.dtype)
        grad_up = F.silu(gate).mul_(grad)
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        return grad_gate, grad_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _SiluMul.apply(gate, up)


def mlp(module: Any, x: torch.Tensor) -> torch.Tensor:
    """A Llama-style MLP's forward with ``silu_mul`` under autocast (SiLU only), the module's own elsewhere."""
    if not torch.is_autocast_enabled(x.device.type) or getattr(module.config, "hidden_act", None) != "silu":
        return type(module).forward(module, x)
    return module.down_proj(silu_mul(module.gate_proj(x), module.up_proj(x)))


class _Rotary(torch.autograd.Function):
    """The rotary embedding of q and k in float32 (as transformers computes it), returned in ``dtype``."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        ctx.save_for_backward(cos, sin)
        ctx.dtypes = (q.dtype, k.dtype)
        return _turn(q, cos, sin).to(dtype), _turn(k, cos, sin).to(dtype)

    @staticmethod
    def backward(ctx: Any, grad_q: torch.Tensor, grad_k: torch.Tensor) -> tuple[Any, ...]:
        cos, sin = ctx.saved_tensors
        dq, dk = ctx.dtypes
        return _turn_back(grad_q, cos, sin).to(dq), _turn_back(grad_k, cos, sin).to(dk), None, None, None


def _turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate(x)·sin in float32, with x cast once."""
    x = x.float()
    return _rotate(x).mul_(sin).add_(x * cos)


def _turn_back(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The transpose of ``_turn``: g·cos + rotate_back(g·sin), with g cast once."""
    g = g.float()
    return _rotate_back(g * sin).add_(g * cos)


def _rotate(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate_back(y: torch.Tensor) -> torch.Tensor:
    """The transpose of ``_rotate``: (y1, y2) -> (y2, -y1)."""
    half = y.shape[-1] // 2
    return torch.cat((y[..., half:], -y[..., :half]), dim=-1)


def attention(module: Any, hidden_states: torch.Tensor, position_embeddings: Any = None,
              attention_mask: Any = None, cache: Any = None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """A Llama attention module's forward with the rotary embedding in one node under autocast (no cache);
    otherwise the module's own."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    device = hidden_states.device.type
    if (cache is not None or kwargs.get("past_key_values") is not None or position_embeddings is None
            or not torch.is_autocast_enabled(device)):
        return type(module).forward(module, hidden_states, position_embeddings=position_embeddings,
                                    attention_mask=attention_mask, cache=cache, **kwargs)
    kwargs.pop("past_key_values", None)
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, module.head_dim)
    q = module.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    k = module.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    v = module.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    q, k = _Rotary.apply(q, k, *position_embeddings, torch.get_autocast_dtype(device))
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, None)
    if interface is None:  # eager
        return type(module).forward(module, hidden_states, position_embeddings=position_embeddings,
                                    attention_mask=attention_mask, cache=cache, **kwargs)
    out, weights = interface(module, q, k, v, attention_mask, dropout=module.attention_dropout if module.training
                             else 0.0, scaling=module.scaling, **kwargs)
    return module.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class _LoraLinear(torch.autograd.Function):
    """x Wᵀ + (drop(x) Aᵀ) Bᵀ · scaling, with W frozen; drop(x) = x · keep · drop_scale (no dropout: keep None).

    The mask is in the input's dtype (``FastDropout.mask``), so each product with it is a plain multiply, and
    ``drop_scale`` and ``scaling`` go onto the rank-r products, not onto full-size tensors."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Any, a: torch.Tensor, b: torch.Tensor,
                keep: Any, drop_scale: float, scaling: float) -> torch.Tensor:
        dt = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            w = weight if weight.dtype == dt else weight.to(dt)
            a_c, b_c = a.to(dt), b.to(dt)
            h = torch.matmul(x if keep is None else x * keep, a_c.t())
            if keep is not None:
                h.mul_(drop_scale)
            y = F.linear(x, w, None if bias is None else bias.to(dt))
            y.view(-1, y.shape[-1]).addmm_(h.view(-1, h.shape[-1]), b_c.t(), alpha=scaling)  # + (h Bᵀ) · scaling
        ctx.save_for_backward(x, w, a_c, b_c, h, keep)
        ctx.drop_scale, ctx.scaling = drop_scale, scaling
        ctx.dtypes = (a.dtype, b.dtype)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, w, a_c, b_c, h, keep = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            grad = grad.to(x.dtype)
            rows = grad.reshape(-1, grad.shape[-1])
            grad_b = rows.t().mm(h.reshape(-1, h.shape[-1])).mul_(ctx.scaling)
            grad_h = torch.matmul(grad, b_c).mul_(ctx.scaling * ctx.drop_scale)  # drop_scale is 1 without a mask
            d = x if keep is None else x * keep  # the masked input, again
            grad_a = grad_h.reshape(-1, grad_h.shape[-1]).t().mm(d.reshape(-1, d.shape[-1]))
            del d
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = torch.matmul(grad_h, a_c)
                if keep is not None:
                    grad_x.mul_(keep)
                grad_x.view(-1, grad_x.shape[-1]).addmm_(rows, w)  # + grad W: the frozen weight's path
        return grad_x, None, None, grad_a.to(ctx.dtypes[0]), grad_b.to(ctx.dtypes[1]), None, None, None


def lora_linear(layer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A peft LoRA linear layer's forward: one node under autocast for a plain LoRA adapter (one active, unmerged,
    no variant), peft's own forward elsewhere."""
    from .dropout import FastDropout

    names = layer.active_adapters
    name = names[0] if len(names) == 1 else None
    base = layer.base_layer
    if (args or kwargs or not torch.is_autocast_enabled(x.device.type) or name is None or layer.merged
            or layer.disable_adapters or name not in layer.lora_A or name in getattr(layer, "lora_variant", {})
            or not isinstance(base, torch.nn.Linear) or getattr(layer, "fan_in_fan_out", False)):
        return type(layer).forward(layer, x, *args, **kwargs)
    dropout = layer.lora_dropout[name]
    if layer.training and isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
        return type(layer).forward(layer, x)
    x = x.to(torch.get_autocast_dtype(x.device.type))
    keep, scale = None, 1.0
    if layer.training and isinstance(dropout, FastDropout) and dropout.p > 0:
        keep, scale = dropout.mask(x), dropout.scale  # in x's dtype, the compute dtype
    return _LoraLinear.apply(x, base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight,
                             keep, scale, float(layer.scaling[name]))


@contextlib.contextmanager
def prepared(model: torch.nn.Module, dtype: Any) -> Iterator[ComputeWeights | None]:
    """``model`` (a peft model being trained in ``dtype``) with the pieces above in place for the block; yields the
    ``ComputeWeights`` (None when the compute dtype is float32: then nothing changes)."""
    if dtype is None or dtype == torch.float32:
        yield None
        return
    from peft.tuners.lora import Linear as LoraLinear

    patched = []
    for module in model.modules():
        kind = type(module).__name__
        if kind in NORMS and hasattr(module, "variance_epsilon"):
            patched.append((module, rms_norm))
        elif kind in MLPS and all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
            patched.append((module, mlp))
        elif kind in ATTENTIONS and all(hasattr(module, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            patched.append((module, attention))
        elif type(module) is LoraLinear:
            patched.append((module, lora_linear))
    weights = ComputeWeights(model, dtype)
    for module, forward in patched:
        module.forward = forward.__get__(module)
    weights.use(True)
    try:
        yield weights
    finally:
        weights.use(False)
        for module, _ in patched:
            del module.forward
