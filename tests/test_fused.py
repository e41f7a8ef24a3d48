"""The fused training pieces (``duckdb_ft/ml/fused.py``) compute what the transformers + peft path computes: each
piece against the module it replaces, then a whole step's loss and LoRA gradients, and the cached weights untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from duckdb_ft.ml import data, fused, kernels, models, training
from duckdb_ft.ml.dropout import fast_dropout
from duckdb_ft.options import TrainingOptions

from conftest import lora_grads, peft_model

BF16 = torch.bfloat16


def close(got, want, rel):
    """Equal up to ``rel`` of the reference's largest magnitude (bf16 rounding of a sum is relative to its terms)."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=rel * scale)


def test_rms_norm_matches_the_llama_module():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(48, eps=1e-5).requires_grad_(False)
    norm.weight.copy_(torch.randn(48))
    x = torch.randn(3, 7, 48, requires_grad=True)
    upstream = torch.randn(3, 7, 48)
    with torch.autocast("cpu", dtype=BF16):
        got = fused.rms_norm(norm, x)
        want = norm(x).to(BF16)  # what each projection's autocast made of the module's float32 output
    assert got.dtype == BF16
    close(got, want, 1e-2)
    (got.float() * upstream).sum().backward()
    got_grad, x.grad = x.grad, None
    (want.float() * upstream).sum().backward()
    close(got_grad, x.grad, 2e-2)
    assert torch.equal(fused.rms_norm(norm, x), norm(x))  # outside autocast: the module's own forward


def test_silu_mul_matches_the_plain_product():
    torch.manual_seed(0)
    gate = torch.randn(5, 64, dtype=BF16, requires_grad=True)
    up = torch.randn(5, 64, dtype=BF16, requires_grad=True)
    upstream = torch.randn(5, 64)
    got = fused.silu_mul(gate, up)
    (got.float() * upstream).sum().backward()
    grads = gate.grad, up.grad
    gate.grad = up.grad = None
    want = F.silu(gate) * up
    (want.float() * upstream).sum().backward()
    assert torch.equal(got, want)
    close(grads[0], gate.grad, 2e-2)
    close(grads[1], up.grad, 2e-2)


def small_model(dropout, targets):
    """A two-layer Llama of ordinary scale (the tiny fixture's wide init leaves bf16 gradients mostly rounding)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.05)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).requires_grad_(False)
    base.set_attn_implementation(kernels.register_attention())
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets))
    for name, p in model.named_parameters():  # LoRA B starts at zero: give it weights, so the adapter matters
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    fast_dropout(model)
    return model.train()


def packed_batch():
    g = torch.Generator().manual_seed(0)
    rows = []
    for n, prompt in ((20, 5), (33, 10), (9, 3), (41, 20), (17, 4)):
        ids = torch.randint(0, 300, (n,), generator=g).tolist()
        rows.append(data.Example(ids, [data.IGNORE] * prompt + ids[prompt:]))
    return data.collate_rows([rows[:3], rows[3:]], 0)  # two packed rows: the block-diagonal mask too


def test_rotary_matches_transformers():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 16, dtype=BF16, requires_grad=True)
    k = torch.randn(2, 2, 9, 16, dtype=BF16, requires_grad=True)
    cos, sin = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    upstream = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16)
    got = fused._Rotary.apply(q, k, cos, sin, BF16)
    sum((g.float() * u).sum() for g, u in zip(got, upstream)).backward()
    grads = q.grad, k.grad
    q.grad = k.grad = None
    want = [w.to(BF16) for w in apply_rotary_pos_emb(q, k, cos, sin)]  # float32, cast by the attention after it
    sum((w.float() * u).sum() for w, u in zip(want, upstream)).backward()
    for g, w in zip(got, want):
        assert g.dtype == BF16 and torch.equal(g, w)
    close(grads[0], q.grad, 1e-2)
    close(grads[1], k.grad, 1e-2)


def step(model, batch, dtype=BF16):
    torch.manual_seed(1)  # the same dropout masks for every path
    with training._autocast("cpu", dtype):
        loss, n = training.completion_loss(model, batch)
    (loss / n).backward()
    return loss.item() / n, lora_grads(model)


ATTENTION_ONLY = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = ATTENTION_ONLY + ["gate_proj", "up_proj", "down_proj"]


@pytest.mark.slow
@pytest.mark.parametrize("targets", [ATTENTION_ONLY, ALL_LINEAR])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_fused_step_is_as_close_to_float32_as_the_plain_bf16_step(dropout, targets):
    """Norms, MLP, LoRA layers and bf16 weights together (packed rows, fast dropout): the loss of the plain bf16 step
    (transformers + peft under autocast), and LoRA gradients as close to the float32 step's as that step's are."""
    batch = packed_batch()
    fp32 = step(small_model(dropout, targets), batch, torch.float32)
    plain = step(small_model(dropout, targets), batch)
    model = small_model(dropout, targets)
    with fused.prepared(model, BF16) as weights:
        patched = {type(m).__name__ for m in model.modules() if "forward" in m.__dict__}
        assert patched == {"LlamaRMSNorm", "LlamaAttention", "LlamaMLP", "Linear"}
        assert weights.swaps and all(m.weight.dtype == BF16 for m, _, _ in weights.swaps)
        got = step(model, batch)
    assert got[0] == pytest.approx(plain[0], rel=2e-4)
    assert got[1].keys() == plain[1].keys() == fp32[1].keys()
    for name, want in fp32[1].items():
        plain_error = ((plain[1][name] - want).norm() / want.norm()).item()
        error = ((got[1][name] - want).norm() / want.norm()).item()
        assert error <= 1.5 * plain_error + 2e-3, (name, error, plain_error)
        assert error < 0.05, name

    model = small_model(dropout, targets)
    with fused.prepared(model, BF16) as weights, weights.originals():
        again = step(model, batch, torch.float32)  # no autocast (evaluation): every piece takes its module's path
    assert again[0] == fp32[0]
    for name in fp32[1]:
        assert torch.equal(again[1][name], fp32[1][name]), name


@pytest.mark.slow
def test_prepared_leaves_the_cached_model_and_restores_the_training_tree(tiny):
    path, tokenizer, examples = tiny
    loaded = models.load(path)
    before = {n: (t.data_ptr(), t.dtype) for n, t in loaded.weights.items()}
    model = peft_model(path)
    with fused.prepared(model, BF16) as weights:
        with weights.originals():
            assert all(m.weight.dtype == torch.float32 for m, _, _ in weights.swaps)  # evaluation: float32
        assert all(m.weight.dtype == BF16 for m, _, _ in weights.swaps)
        assert {(t.data_ptr(), t.dtype) for t in loaded.weights.values()} == set(before.values())
    assert not any("forward" in m.__dict__ for m in model.modules())
    inner = dict(model.get_base_model().named_parameters(remove_duplicate=False))
    for n, t in loaded.weights.items():
        if n in inner:
            assert inner[n].data_ptr() == before[n][0], n
    seen = []
    training.train(models.load_for_training(path), examples, examples,
                   TrainingOptions(max_epochs=1, batch_size=3, lora_r=4, lora_dropout=0.05, dtype="bfloat16"),
                   tokenizer.pad_token_id, training.Hooks(on_step=seen.append))
    assert len(seen) == 2 and all(m["training_loss"] > 0 for m in seen)
    assert "validation_loss" in seen[-1]
