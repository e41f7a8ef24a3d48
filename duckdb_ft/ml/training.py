"""The LoRA training loop: explicit, top to bottom, over transformers + peft (no Trainer).

Per optimizer step: learning rate → micro-batches (forward, completion-only loss, backward) → clip → step → log →
evaluate / checkpoint → stop check. Logits are computed only where the loss needs them (completion tokens), which
saves most of the LM head's time and memory on prompt-heavy data.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..options import TrainingOptions
from . import devices
from .devices import autocast as _autocast, compute_dtype  # noqa: F401  (compute_dtype: training's, as before)
from .data import (IGNORE, Example, collate_packed, iter_batches, iter_packed, padded_positions,
                   packed_batches, split_rows)
from .keep_best import Selection

# The linear projections of attention and MLP by architecture: the default LoRA targets (adapting the MLP too
# scored higher than attention alone on both tasks of benchmarks/defaults_study.py).
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGETS = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
}
CHECKPOINT_SECONDS = 30.0
# On a CPU, a step's packed rows go forward and backward in micro-batches of at most this many positions (rows x
# width; a wider row alone), shared by the cores' lanes (``lanes``): the activations kept for backward, about
# 0.75 MB a position for the default model in bf16, stay near 0.4 GB a lane whatever the batch. The gradients are
# the whole batch's (summed). The split does not depend on how many lanes there are, so neither does the adapter.
MICRO_BATCH_POSITIONS = 512

# peft asks transformers a deprecated question when it wraps a model; nothing for our users to do. A filter set
# once here, not around the call: ``warnings.catch_warnings`` is not thread-safe, and jobs run in worker threads.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


class Cancelled(Exception):
    """Raised inside the loop when the job's cancel event is set; the job becomes CANCELLED."""


@dataclass
class TrainResult:
    adapter: dict[str, Any]
    lora_config: dict[str, Any]
    training_loss: float
    validation_loss: float | None
    """Of the kept adapter: the best evaluation's with ``keep_best``, else the last one's."""
    steps: int
    epochs: float
    """Passes over the training rows actually made (fewer than max_epochs when the job stopped early)."""
    best_step: int | None = None
    """The step whose adapter is kept (the best evaluation's with ``keep_best``)."""
    stopped_early: bool = False


@dataclass
class Hooks:
    """How the loop talks to its job: all optional."""

    on_step: Callable[[dict[str, Any]], None] = lambda m: None
    should_stop: Callable[[], bool] = lambda: False
    save_checkpoint: Callable[[int, bytes], None] = lambda step, state: None
    checkpoint_on_stop: Callable[[], bool] = lambda: False  # save before stopping (shutdown, not a CANCEL)


class Local:
    """The processes a step's work is shared by: here one, which does it all. ``distributed.Ranks`` is several
    (torchrun, DDP); ``train`` asks its world for the loss function, its share of each step and the totals."""

    size = 1

    def prepare(self, model: Any) -> Callable[[dict[str, Any]], Any]:
        """The function from a batch to (loss sum, completion tokens) that training differentiates."""
        return lambda batch: completion_loss(model, batch)

    def share(self, group: list[Any]) -> list[Any]:
        """This process's micro-batches of a step's ``group`` (every one here)."""
        return group

    def sync(self, last: bool) -> Any:
        """Around a micro-batch's forward and backward: gradients are combined on the last one only."""
        return contextlib.nullcontext()

    def total(self, *values: float) -> tuple[float, ...]:
        """Sums over the processes of per-process values."""
        return values

    def evaluate(self, model: Any, examples: list[Example], batch_size: int, pad_id: int, device: str) -> float | None:
        return evaluate(model, examples, batch_size, pad_id, device)

    def adapter_state(self, model: Any) -> dict[str, Any]:
        """The LoRA weights, whole (a sharded world gathers them: every process calls this at the same point)."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer(self, optimizer: Any, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def stop(self, hooks: "Hooks") -> int:
        """0 to go on, 1 to stop, 2 to checkpoint and stop (one decision for every process)."""
        if not hooks.should_stop():
            return 0
        return 2 if hooks.checkpoint_on_stop() else 1


def target_modules(model: Any, opts: TrainingOptions) -> list[str]:
    if opts.target_modules:
        return list(opts.target_modules)
    kind = getattr(model.config, "model_type", "")
    if kind in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[kind]
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    found = [t for t in _LLAMA_LIKE if t in names]
    return found or ["all-linear"]


def lora_config(model: Any, opts: TrainingOptions) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                      target_modules=target_modules(model, opts), bias="none", task_type="CAUSAL_LM")


def config_dict(cfg: Any) -> dict[str, Any]:
    """A LoraConfig as plain JSON-able values (sets become sorted lists)."""
    out = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, set):
            v = sorted(v)
        if hasattr(v, "value"):  # enums
            v = v.value
        out[k] = v
    return out


def completion_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Sum of cross-entropy over completion tokens, and their count; logits only where labels are.

    Batches are right-padded (``data.collate_rows``), so a causal model needs no padding mask: a real token only
    attends to earlier positions, which are all real. Rows holding one example each take attention's plain causal
    path; packed rows are recognized by transformers from ``position_ids``, which keeps each example to itself.
    """
    from . import kernels  # imports torch: loaded with the first step, not with this module

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"),
                                 use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    loss = kernels.completion_cross_entropy(hidden[:, :-1][keep], inner.get_output_embeddings(), labels[keep])
    return loss, int(keep.sum())


def evaluate(model: Any, examples: list[Example], batch_size: int, pad_id: int, device: str,
             dtype: Any = None) -> float | None:
    """Mean loss over the completion tokens of ``examples``, computed in ``dtype`` (None: the weights' float32).

    Training evaluates in float32, as COMPLETE generates: bf16 rounds every layer's output, which blurs a LoRA
    update of a few percent and read 1.5% higher after training on the benchmark (0.1% before training).
    """
    import torch

    if not examples:
        return None
    model.eval()
    total, n = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    with torch.no_grad(), _autocast(device, dtype):
        for batch in iter_batches(examples, batches, pad_id):
            loss, count = completion_loss(model, _to(batch, device))
            total, n = total + loss.item(), n + count
    model.train()
    return total / max(n, 1)


def _world_step(world: Local, loss_of: Callable[[dict[str, Any]], Any], examples: Sequence[Example],
                work: list[Any], mine: bool, pad_id: int, device: str, dtype: Any, n_step: int) -> tuple[float, int]:
    """A step's micro-batches in a world of processes: backward into ``grad``, gradients combined on the last."""
    loss_sum, tokens = 0.0, 0
    for j, batch in enumerate(iter_packed(examples, work, pad_id)):
        with world.sync(j == len(work) - 1):
            with _autocast(device, dtype):
                loss, _ = loss_of(_to(batch, device))
            (loss / n_step * world.size if mine else loss * 0.0).backward()  # DDP averages: size undoes it
        if mine:
            loss_sum += loss.item()
            tokens += int(batch["attention_mask"].sum())
    return loss_sum, tokens


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def _cpu_fast_paths(base: Any) -> None:
    """Attention by explicit products for short batches (``kernels``), where the model lets us choose."""
    try:
        from . import kernels

        base.set_attn_implementation(kernels.register_attention())
    except Exception:  # an architecture without the attention interface keeps its own
        pass


def schedule(opts: TrainingOptions, total_steps: int) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at each optimizer step: a linear warm-up to 1 over
    ``warmup_ratio`` of the steps, then ``lr_scheduler_type``'s shape ("linear" or "cosine" decay towards 0 at
    ``total_steps``, or "constant" 1)."""
    warmup = int(math.ceil(opts.warmup_ratio * total_steps))
    kind = opts.lr_scheduler_type

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        left = max(0.0, (total_steps - step) / max(1, total_steps - warmup))  # 1 after the warm-up, 0 at the end
        return left if kind == "linear" else 0.5 * (1.0 - math.cos(math.pi * left))

    return factor


def train(
    base: Any,
    train_examples: list[Example],
    val_examples: list[Example],
    opts: TrainingOptions,
    pad_id: int,
    hooks: Hooks | None = None,
    resume: bytes | None = None,
    initial: dict[str, Any] | None = None,
    world: Local | None = None,
    objective: Any = None,
) -> TrainResult:
    """Train LoRA adapters on ``base``: a module tree of its own (peft wraps it in place), whose frozen weights may
    be shared with other modules (``models.load_for_training``): they are only read. ``initial``: adapter weights
    to start from instead of a fresh LoRA (continued training: the parent model's, of the same shape). ``world``:
    the processes sharing each step (None: this one alone); every process of a world sees the same examples, the
    same step of ``global_batch`` pairs, and computes the same step's loss over all of them. ``objective``: a
    preference method's loss (``preference.Preference``: dpo, kto; its reference is ``initial``, else the base
    model), on one process; None is SFT's completion loss."""
    import torch
    from peft import get_peft_model, set_peft_model_state_dict

    from . import dropout, fused, kernels, lanes

    hooks = hooks or Hooks()
    world = world or Local()
    device = next(base.parameters()).device.type
    dtype = compute_dtype(opts, device)
    torch.manual_seed(opts.seed)
    cfg = lora_config(base, opts)
    if device == "cpu":
        _cpu_fast_paths(base)
    model = get_peft_model(base, cfg)
    if device == "cpu":
        dropout.fast_dropout(model)
    if opts.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    # weights_only: a checkpoint holds tensors and plain values only (the optimizer's state_dict, the step), so
    # loading it cannot run code even if the database file came from someone else.
    state = torch.load(io.BytesIO(resume), map_location=device, weights_only=True) if resume is not None else None
    if state is not None:
        set_peft_model_state_dict(model, state["adapter"])  # before the world shards the model (fsdp)
    elif initial is not None:
        set_peft_model_state_dict(model, {k: v.to(device) for k, v in initial.items()})
    model.train()
    loss_of = objective.loss_fn(model) if objective is not None else world.prepare(model)
    collate_fn = objective.collate if objective is not None else collate_packed
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.learning_rate, weight_decay=opts.weight_decay)

    steps_per_epoch = opts.steps_per_epoch(len(train_examples))
    total_steps = steps_per_epoch * opts.max_epochs
    lr_factor = schedule(opts, total_steps)

    step, tokens_seen = 0, 0
    selection = Selection(opts.keep_best, opts.early_stopping_patience)
    if state is not None:
        world.load_optimizer(optimizer, state["optimizer"])
        step, tokens_seen = state["step"], state["tokens"]
        selection.load(state.get("selection"))

    def checkpoint() -> None:
        buf = io.BytesIO()
        torch.save({"adapter": world.adapter_state(model), "optimizer": world.optimizer_state(optimizer),
                    "step": step, "tokens": tokens_seen, "selection": selection.state()}, buf)
        hooks.save_checkpoint(step, buf.getvalue())

    session = kernels.cpu_session() if device == "cpu" else contextlib.nullcontext(lambda: None)
    budget = MICRO_BATCH_POSITIONS if device == "cpu" else None  # a GPU takes each batch whole
    # The fused decoder pieces and bf16 base weights (``fused``), for this run only; not with sharded layers.
    fast = fused.prepared(model, dtype) if device == "cpu" and not getattr(world, "shards", None) \
        else contextlib.nullcontext()

    def evaluate() -> float | None:  # in float32, with the float32 base weights
        if objective is not None:  # in the reference log-probabilities' dtype: the steps'
            loss, found = objective.evaluate(model, val_examples, opts.batch_size, pad_id, device,
                                             lambda: _autocast(device, dtype), budget)
            eval_metrics.update(found)
            return loss
        with weights.originals() if weights is not None else contextlib.nullcontext():
            return world.evaluate(model, val_examples, opts.batch_size, pad_id, device)

    eval_metrics: dict[str, float] = {}

    local = type(world) is Local  # one process: its step's micro-batches go to lanes (DDP worlds sync their own)
    lane_pool = lanes.Lanes(torch.get_num_threads() if device == "cpu" and local else 1)
    with session as fit_threads, fast as weights, contextlib.closing(lane_pool):
        if objective is not None:  # the reference's log-probabilities, in the steps' own compute dtype
            objective.prepare(model, [train_examples, val_examples], pad_id, device,
                              lambda: _autocast(device, dtype), initial, budget)
        start = time.perf_counter()
        last_ckpt = start
        val_loss: float | None = None
        epoch_losses: list[tuple[float, int]] = []
        for epoch in range(step // steps_per_epoch, opts.max_epochs):
            if selection.stopped_early:
                break
            batches = packed_batches(train_examples, opts.batch_size, opts.seed + epoch)
            per_step = opts.gradient_accumulation_steps * world.size  # a step: global_batch pairs, on every process
            n_groups = -(-len(batches) // per_step)  # the plan packs a step's batches when asked for them
            epoch_losses = []
            for k in range(n_groups):
                if epoch * steps_per_epoch + k < step:
                    continue  # replaying a resumed job: these steps are in the checkpoint
                group = batches[k * per_step:(k + 1) * per_step]
                threads = fit_threads() if device == "cpu" else 1
                stop = world.stop(hooks)
                if stop:
                    if stop == 2 and step > 0:
                        checkpoint()
                    raise Cancelled()
                lr = opts.learning_rate * lr_factor(step)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                # The loss is a mean over every completion token of the optimizer step, whatever the micro-batching.
                n_step = sum(train_examples[i].n_trained for rows in group for row in rows for i in row) or 1
                if objective is not None:  # kto: each batch's KL estimate under the policy as it is now
                    objective.before_step(model, train_examples, group, pad_id, device,
                                          lambda: _autocast(device, dtype), budget)
                mine = world.share(group)  # a process with no pair in a short last step still joins the sync, at 0
                work = [part for rows in (mine or group[:1]) for part in split_rows(train_examples, rows, budget)]
                if local:  # the micro-batches' gradients by lanes (one here without a CPU's cores)
                    def micro_batch(j: int, rows: list[list[list[int]]] = work) -> tuple[Any, int]:
                        batch = collate_fn(train_examples, rows[j], pad_id)
                        with _autocast(device, dtype):
                            loss, _ = loss_of(_to(batch, device))
                        return loss, int(batch["attention_mask"].sum())

                    sizes = [padded_positions(train_examples, rows) for rows in work]
                    seed = (opts.seed, step) if device == "cpu" else None
                    loss_sum, step_tokens = lane_pool.step(micro_batch, sizes, params, n_step, threads, seed)
                else:
                    loss_sum, step_tokens = _world_step(world, loss_of, train_examples, work, bool(mine), pad_id,
                                                        device, dtype, n_step)
                loss_sum, step_tokens = world.total(loss_sum, step_tokens)
                tokens_seen += int(step_tokens)
                if opts.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                train_loss = loss_sum / n_step
                epoch_losses.append((loss_sum, n_step))
                metric: dict[str, Any] = {"step": step, "epoch": step / steps_per_epoch, "training_loss": train_loss,
                                          "learning_rate": lr, "tokens": tokens_seen,
                                          "elapsed_s": time.perf_counter() - start, "total_steps": total_steps}
                if objective is not None:
                    metric["method_metrics"] = objective.step_metrics()
                end_of_epoch = k == n_groups - 1
                if end_of_epoch or (opts.eval_steps and step % opts.eval_steps == 0):
                    val_loss = evaluate()
                    metric["validation_loss"] = val_loss
                    if eval_metrics:
                        metric["method_metrics"] = {**metric.get("method_metrics", {}), **eval_metrics}
                    selection.observe(step, val_loss, lambda: world.adapter_state(model))
                hooks.on_step(metric)
                if selection.stopped_early:
                    break
                if end_of_epoch or time.perf_counter() - last_ckpt > CHECKPOINT_SECONDS:
                    if step < total_steps:
                        checkpoint()
                    last_ckpt = time.perf_counter()

        if val_loss is None:
            val_loss = evaluate()
            selection.observe(step, val_loss, lambda: world.adapter_state(model))
        final_train = (sum(s for s, _ in epoch_losses) / max(1, sum(n for _, n in epoch_losses))
                       if epoch_losses else float("nan"))
    adapter = {k: v.detach().to("cpu").contiguous() for k, v in world.adapter_state(model).items()}
    best_step = step
    if selection.best_adapter is not None and val_loss is not None and selection.best_loss < val_loss:
        adapter, val_loss, best_step = selection.best_adapter, selection.best_loss, selection.best_step
    return TrainResult(adapter=adapter, lora_config=config_dict(cfg), training_loss=final_train,
                       validation_loss=val_loss, steps=step, epochs=step / steps_per_epoch, best_step=best_step,
                       stopped_early=selection.stopped_early)
