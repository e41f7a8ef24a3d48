"""The training step's speed-ups change no result: loss, gradients, dropout, batching, dtype, shared weights."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from duckdb_ft.ml import data, dropout, kernels, models, training
from duckdb_ft.options import TrainingOptions
from conftest import lora_grads, peft_model, python_output

def reference_loss(model, batch):
    """The textbook loss: full-vocabulary logits at every position, with the attention mask, fp32."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != data.IGNORE
    return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum"), int(keep.sum())


@pytest.mark.slow
def test_loss_and_gradients_equal_the_full_logits_reference(tiny):
    """No mask on right-padded batches, logits only at completion positions, explicit attention: same numbers."""
    path, tokenizer, examples = tiny
    batch = data.collate(examples, tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # the batch is padded: the mask matters to the reference
    kernels.register_attention()
    ours = peft_model(path, attention=kernels.ATTENTION)
    ref = peft_model(path)
    loss, n = training.completion_loss(ours, batch)
    expected, n_ref = reference_loss(ref, batch)
    assert n == n_ref == sum(e.n_trained for e in examples)  # position 0 is always prompt
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    (loss / n).backward()
    (expected / n).backward()
    got, want = lora_grads(ours), lora_grads(ref)
    assert got.keys() == want.keys() and got
    for name in got:
        scale = want[name].abs().max().item()
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_bf16_loss_is_close_to_fp32(tiny):
    path, tokenizer, examples = tiny
    model = peft_model(path)
    fp32 = training.evaluate(model, examples, 4, tokenizer.pad_token_id, "cpu", torch.float32)
    bf16 = training.evaluate(model, examples, 4, tokenizer.pad_token_id, "cpu", torch.bfloat16)
    assert bf16 == pytest.approx(fp32, rel=0.01)


def test_compute_dtype_option():
    assert training.compute_dtype(TrainingOptions(dtype="float32"), "cpu") == torch.float32
    assert training.compute_dtype(TrainingOptions(dtype="bfloat16"), "cpu") == torch.bfloat16
    assert training.compute_dtype(TrainingOptions(), "cpu") in (torch.float32, torch.bfloat16)
    assert TrainingOptions.parse('{"dtype": "bfloat16"}').dtype == "bfloat16"
    with pytest.raises(Exception, match='dtype must be one of "auto", "float32", "bfloat16"'):
        TrainingOptions.parse('{"dtype": "float16"}')


def check_explicit_attention_against_sdpa(b, length, allowed, dtype):
    """Output and q/k/v gradients of the explicit path equal sdpa's: causal (``allowed`` None) or with that mask."""
    torch.manual_seed(0)
    heads, kv, dim = 6, 2, 16
    q = torch.randn(b, heads, length, dim, requires_grad=True)
    k = torch.randn(b, kv, length, dim, requires_grad=True)
    v = torch.randn(b, kv, length, dim, requires_grad=True)
    weights = torch.randn(b, length, heads, dim)

    class Module(torch.nn.Module):
        pass

    out, _ = kernels.causal_attention(Module(), q.to(dtype), k.to(dtype), v.to(dtype), allowed)
    (out.float() * weights).sum().backward()
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    mask = {"is_causal": True} if allowed is None else {"attn_mask": allowed}
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **mask).transpose(1, 2)
    (ref * weights).sum().backward()
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.05, "atol": 0.05}
    torch.testing.assert_close(out.float(), ref, **tol)
    for g, t in zip(got, (q, k, v)):
        torch.testing.assert_close(g, t.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explicit_attention_matches_sdpa(dtype):
    check_explicit_attention_against_sdpa(3, 41, None, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explicit_attention_with_a_packed_mask_matches_sdpa(dtype):
    """Two examples packed in each row (block-diagonal causal mask): the explicit path equals sdpa with that mask."""
    length = 30
    segment = torch.tensor([[0] * 12 + [1] * 18, [0] * 25 + [1] * 5])
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = (causal & (segment[:, :, None] == segment[:, None, :]))[:, None]
    check_explicit_attention_against_sdpa(2, length, allowed, dtype)


def test_packed_rows_attend_one_example_at_a_time():
    """A block-diagonal causal mask is read as its examples (padding continuing the last one); any other mask is
    not, and takes the whole-row path."""
    length = 10
    segment = torch.tensor([[0] * 3 + [1] * 4 + [2] * 3, [0] * 10])
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = (causal & (segment[:, :, None] == segment[:, None, :]))[:, None]
    assert kernels._segments(allowed, length) == [[(0, 3), (3, 7), (7, 10)], [(0, 10)]]
    window = allowed.clone()
    window[1, 0, 9, 0] = False  # a sliding window, not an example boundary
    assert kernels._segments(window, length) is None
    leaky = allowed.clone()
    leaky[0, 0, 5, 1] = True  # a query that sees into the example before its own
    assert kernels._segments(leaky, length) is None


def test_explicit_attention_leaves_long_and_masked_batches_to_sdpa(monkeypatch):
    calls = []
    import transformers.integrations.sdpa_attention as sdpa

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape) or ("sdpa", None))

    class Module(torch.nn.Module):
        pass

    long = torch.randn(1, 2, kernels.EXPLICIT_MAX_LENGTH + 1, 8)
    assert kernels.causal_attention(Module(), long, long, long, None)[0] == "sdpa"
    short = torch.randn(1, 2, 5, 8)
    assert kernels.causal_attention(Module(), short, short, short, torch.zeros(1, 1, 5, 5))[0] == "sdpa"  # additive
    empty_row = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    empty_row[0, 0, 2] = False  # a query that attends nowhere (left padding): sdpa's business
    assert kernels.causal_attention(Module(), short, short, short, empty_row)[0] == "sdpa"
    assert len(calls) == 3


def test_completion_cross_entropy_matches_reference(monkeypatch):
    monkeypatch.setattr(kernels, "LOGIT_CHUNK", 300 * 7)  # several chunks
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False).requires_grad_(False)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 300, (23,))
    loss = kernels.completion_cross_entropy(hidden, head, targets)
    (2 * loss).backward()
    got = hidden.grad.clone()
    hidden.grad = None
    ref = F.cross_entropy(head(hidden), targets, reduction="sum")
    (2 * ref).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(got, hidden.grad)


def test_fast_dropout_keeps_the_distribution_and_the_gradient():
    torch.manual_seed(0)
    drop = dropout.FastDropout(0.05)
    x = torch.randn(400, 500, requires_grad=True)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.05, abs=0.003)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - 0.05), rtol=1e-4, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - 0.05), rtol=1e-4, atol=0)
    assert not torch.equal(drop(x), y)  # fresh randomness each call
    # The mask comes in the input's dtype (a product with it is then a plain multiply), from the seeded generator too
    with dropout.seeded(3):
        keep = drop.mask(x.detach().bfloat16())
    assert keep.dtype == torch.bfloat16 and set(keep.unique().tolist()) == {0.0, 1.0}
    assert 1 - keep.float().mean().item() == pytest.approx(0.05, abs=0.003)
    drop.eval()
    assert drop(x) is x


@pytest.mark.slow
def test_training_swaps_in_the_cpu_fast_paths(tiny):
    path, tokenizer, examples = tiny
    base = models.load_for_training(path)
    seen = []
    training.train(base, examples, examples, TrainingOptions(max_epochs=1, batch_size=3, lora_r=4, lora_dropout=0.05),
                   tokenizer.pad_token_id, training.Hooks(on_step=seen.append))
    assert base.config._attn_implementation == kernels.ATTENTION
    assert any(isinstance(m, dropout.FastDropout) for m in base.modules())
    assert len(seen) == 2 and all(m["training_loss"] > 0 for m in seen)


def test_packed_batches_are_random_batches_with_little_padding():
    """Each step draws a random batch (not one grouped by length); packing leaves under 10% padding where padding
    each example to its batch's longest costs over a quarter, on lengths as uneven as real rows."""
    rng = random.Random(0)
    examples = [data.Example([1] * n, [1] * n) for n in (min(512, int(rng.lognormvariate(5, 0.5))) for _ in range(400))]
    total = sum(len(e.input_ids) for e in examples)

    for epoch in range(3):
        batches = data.packed_batches(examples, 8, seed=epoch)
        members = [sorted(i for row in rows for i in row) for rows in batches]
        assert sorted(i for m in members for i in m) == list(range(400))  # every row once per epoch
        assert [len(m) for m in members] == [8] * 50
        # the same batches a random sampler draws from the seeded shuffle
        order = list(range(400))
        random.Random(epoch).shuffle(order)
        assert members == [sorted(order[k:k + 8]) for k in range(0, 400, 8)]
        longest = [max(len(examples[i].input_ids) for i in m) for m in members]
        widths = [max(sum(len(examples[i].input_ids) for i in row) for row in rows) for rows in batches]
        assert all(w <= n + data.PACK_SLACK for w, n in zip(widths, longest))  # rows stay short
        packed = sum(len(rows) * w for rows, w in zip(batches, widths))
        padded = sum(8 * n for n in longest)
        assert 1 - total / packed < 0.10
        assert 1 - total / padded > 0.25
    assert list(data.packed_batches(examples, 8, seed=1)) == list(data.packed_batches(examples, 8, seed=1))  # resume


@pytest.mark.slow
def test_packed_rows_give_the_loss_and_gradients_of_separate_rows(tiny, monkeypatch):
    """Examples packed into one row attend only inside themselves: the same loss and LoRA gradients as one
    example per row, through the explicit attention path and through transformers' sdpa."""
    path, tokenizer, examples = tiny
    rows = [examples[:3], examples[3:]]
    packed = data.collate_rows(rows, tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] == 2
    assert (packed["position_ids"][0] == 0).sum() == 3  # three examples restart their positions in row 0
    separate = data.collate(examples, tokenizer.pad_token_id)
    kernels.register_attention()
    masks = []
    explicit = kernels._CausalAttention.apply
    monkeypatch.setattr(kernels._CausalAttention, "apply", lambda *a: masks.append(a[-1]) or explicit(*a))
    for attention in (kernels.ATTENTION, None):
        got_model, want_model = peft_model(path, attention=attention), peft_model(path, attention=attention)
        loss, n = training.completion_loss(got_model, packed)
        expected, n_ref = training.completion_loss(want_model, separate)
        assert n == n_ref == sum(e.n_trained for e in examples)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        (loss / n).backward()
        (expected / n).backward()
        got, want = lora_grads(got_model), lora_grads(want_model)
        for name in got:
            scale = want[name].abs().max().item()
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
        if attention == kernels.ATTENTION:  # the packed rows took the explicit path, one example at a time
            assert masks and all(m is None for m in masks)
            # forward: each packed example on its own, and the separate rows in one call, in every layer
            assert len(masks) == (len(examples) + 1) * got_model.config.num_hidden_layers


@pytest.mark.slow
def test_training_module_shares_the_cached_weights(tiny):
    """One copy of the base weights for COMPLETE and training; training never writes them."""
    path, tokenizer, examples = tiny
    loaded = models.load(path)
    before = {n: t.clone() for n, t in loaded.weights.items()}
    base = models.load_for_training(path)
    shared = dict(base.named_parameters(remove_duplicate=False))
    shared.update(base.named_buffers(remove_duplicate=False))
    assert shared.keys() == loaded.weights.keys()
    assert all(shared[n].data_ptr() == loaded.weights[n].data_ptr() for n in shared)
    attention = loaded.model.config._attn_implementation
    training.train(base, examples, examples, TrainingOptions(max_epochs=2, batch_size=3, learning_rate=0.05),
                   tokenizer.pad_token_id)
    assert loaded.model.config._attn_implementation == attention  # the cached model keeps its own attention
    for n, t in loaded.weights.items():
        assert torch.equal(t, before[n]), n
    assert not any(t.requires_grad for t in loaded.weights.values())


def test_micro_batches_cover_the_rows_in_order_within_the_budget(tiny):
    """split_rows: consecutive parts, every row once, each part's rows x widest row within the budget (a wider
    row alone); no budget: the batch whole."""
    _, _, examples = tiny
    rows = [[0, 1], [2], [3, 4], [5]]
    width = {k: sum(len(examples[i].input_ids) for i in row) for k, row in enumerate(rows)}
    assert data.split_rows(examples, rows, None) == [rows]
    for budget in (1, min(width.values()) * 2, max(width.values()) * 2, 10 ** 6):
        parts = data.split_rows(examples, rows, budget)
        assert [row for part in parts for row in part] == rows
        for part in parts:
            widest = max(sum(len(examples[i].input_ids) for i in row) for row in part)
            assert len(part) == 1 or len(part) * widest <= budget
    assert len(data.split_rows(examples, rows, 1)) == len(rows)
    assert data.split_rows(examples, rows, 10 ** 6) == [rows]


@pytest.mark.slow
def test_a_step_in_micro_batches_trains_the_same_adapter(tiny, monkeypatch):
    """Micro-batches of a step sum to the step's gradient: the same adapter after two epochs, one row at a time
    or each batch whole (no dropout, so both draw nothing at random)."""
    path, tokenizer, examples = tiny
    opts = TrainingOptions(max_epochs=2, batch_size=6, lora_r=4, lora_dropout=0.0, learning_rate=0.05, dtype="float32")
    assert len(data.packed_batches(examples, 6, opts.seed)[0]) > 1  # the batch is several rows: there is a split
    adapters = []
    for budget in (10 ** 6, 1):
        monkeypatch.setattr(training, "MICRO_BATCH_POSITIONS", budget)
        adapters.append(training.train(models.load_for_training(path), examples, examples, opts,
                                       tokenizer.pad_token_id).adapter)
    whole, split = adapters
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(whole[name].abs().max() > 0 for name in whole if "lora_B" in name)  # it trained


def test_thread_fit_leaves_the_cores_other_processes_use(monkeypatch):
    start = torch.get_num_threads()
    fit = kernels.ThreadFit(interval=5.0)
    fit.start_threads, fit.cores = 4, 4
    samples = iter([(10.0, 30.0, 10.0), (12.0, 36.0, 12.0), (20.0, 50.0, 30.0)])
    monkeypatch.setattr(fit, "_sample", lambda: next(samples))
    fit._last = (0.0, 0.0, 0.0)
    try:
        assert fit() == 2  # 10 s: 30 s busy, 10 s of it ours: 2 cores busy elsewhere
        assert fit() == 2  # 2 s later: too soon to measure again
        assert fit() == 4  # the machine is ours again
    finally:
        fit.start_threads = start
        fit.restore()
    assert torch.get_num_threads() == start


def test_steady_allocator_pins_glibc():
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux") or not ctypes.util.find_library("c"):
        pytest.skip("glibc only")
    assert kernels.steady_allocator()
    kernels.release_free_memory()


@pytest.mark.slow
def test_the_model_package_asks_torch_for_huge_pages_unless_the_user_chose():
    """Importing duckdb_ft before torch turns on PyTorch's huge-page allocation for large CPU tensors; a value
    the user set is kept, and with torch already loaded nothing is set (torch reads it once, at its first
    allocation)."""
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("transparent huge pages are Linux's")
    show = "import os; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"

    def run(code: str, **env: str) -> str:
        return python_output(code, unset=("THP_MEM_ALLOC_ENABLE",), **env)

    assert run(f"import duckdb_ft; {show}") == "1"
    assert run(f"import duckdb_ft.ml; {show}", THP_MEM_ALLOC_ENABLE="0") == "0"
    assert run(f"import torch, duckdb_ft.ml; {show}") == "None"


@pytest.mark.slow
def test_the_model_package_bounds_the_kernel_caches_unless_the_user_chose():
    """PyTorch's and oneDNN's caches of compiled kernels are bounded (32 and 64) when duckdb_ft is imported before
    torch (micro-batches of ever new shapes fill them, each kernel holding memory); a user's value is kept, and after
    torch nothing is set."""
    import sys

    names = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    show = f"import os; print(*(os.environ.get(n) for n in {names!r}))"

    def run(code: str, **env: str) -> str:
        return python_output(code, unset=names, **env)

    if sys.platform.startswith("linux"):
        assert run(f"import duckdb_ft; {show}") == "32 64"
        assert run(f"import duckdb_ft.ml; {show}", ONEDNN_PRIMITIVE_CACHE_CAPACITY="2048") == "32 2048"
    assert run(f"import duckdb_ft.ml; {show}", LRU_CACHE_CAPACITY="7", ONEDNN_PRIMITIVE_CACHE_CAPACITY="9") == "7 9"
    assert run(f"import torch, duckdb_ft.ml; {show}") == "None None"


@pytest.mark.slow
def test_gradient_checkpointing_recomputes_the_same_step(tiny):
    """Checkpointing with the CPU fast paths (fast dropout included: its mask must be drawn again identically)."""
    path, tokenizer, examples = tiny
    batch = data.collate(examples, tokenizer.pad_token_id)
    grads = []
    for checkpointing in (False, True):
        model = peft_model(path, dropout=0.3, attention=kernels.register_attention())
        dropout.fast_dropout(model)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, n = training.completion_loss(model, batch)
        (loss / n).backward()
        grads.append(lora_grads(model))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)
