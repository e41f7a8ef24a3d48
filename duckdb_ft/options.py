"""Options JSON of FINETUNE and COMPLETE: a dataclass each, with typed defaults, read by one parser.

The parser gathers every problem and raises once; unknown names, duplicated names, NaN and out-of-range values are
errors, never silently ignored. FINETUNE's options are stored as JSON with the job.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"option {k!r} is given twice")
        seen[k] = v
    return seen


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _int(lo: int, hi: int | None = None):
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            return f"must be an integer from {lo} to {hi}" if hi is not None else f"must be an integer of at least {lo}"
        return None
    return check


def _float(lo: float, hi: float, lo_open: bool = False):
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "must be a number"
        if (v <= lo if lo_open else v < lo) or v > hi:
            return f"must be in {'(' if lo_open else '['}{lo}, {hi}]"
        return None
    return check


def _modules(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(m, str) and m.isidentifier() for m in v):
        return 'must be a non-empty list of module names, e.g. ["q_proj", "v_proj"]'
    return None


def _endpoint(v: Any) -> str | None:
    if v is None:
        return None
    host, _, port = v.rpartition(":") if isinstance(v, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        return 'must be "host:port", e.g. "10.0.0.1:29400"'
    return None


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _one_of(*values: str):
    def check(v: Any) -> str | None:
        return None if v in values else "must be one of " + ", ".join(f'"{x}"' for x in values)
    return check


_lr = _float(0.0, 1.0, lo_open=True)
_frac = _float(0.0, 0.5)
_dropout = _float(0.0, 0.9)
_warm = _float(0.0, 0.5)
_decay = _float(0.0, 1.0)
_clip = _float(0.0, 1e6)
_temperature = _float(0.0, 2.0)
_top_p = _float(0.0, 1.0, lo_open=True)
_positive = _float(0.0, 100.0, lo_open=True)
_FLOATS = {_lr, _frac, _dropout, _warm, _decay, _clip, _temperature, _top_p, _positive}



@dataclass
class TrainingOptions:
    """Every hyperparameter of a fine-tuning job (names as in the options JSON of FINETUNE 'CREATE')."""

    max_epochs: int = 3
    """Passes over the training rows, 1 to 10 (as Cortex)."""
    learning_rate: float = 2e-4
    """Peak AdamW learning rate, reached after warm-up, then decayed linearly to 0."""
    lora_r: int = 16
    """LoRA rank (defaults chosen by held-out score per minute of CPU training: benchmarks/README.md)."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input during training."""
    target_modules: list[str] | None = None
    """Module names to adapt; None picks the architecture's linear projections (for Llama: q, k, v, o, gate, up,
    down), which beat the attention projections alone on both tasks of benchmarks/defaults_study.py."""
    batch_size: int = 8
    """Pairs per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size * gradient_accumulation_steps)."""
    max_seq_length: int = 512
    """Tokens per pair (prompt + completion in the chat template); longer pairs are truncated and counted."""
    warmup_ratio: float = 0.1
    """Fraction of the optimizer steps spent warming the learning rate up from 0."""
    lr_scheduler_type: str = "linear"
    """The learning rate after the warm-up, as transformers names it: "linear" decays it to 0 at the last step,
    "cosine" follows half a cosine down to 0, "constant" keeps the peak to the end (the warm-up comes first in
    each; with ``warmup_ratio`` 0, "constant" is transformers' "constant")."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA weights."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm (0 disables clipping)."""
    validation_fraction: float = 0.1
    """With no validation query: the share of training rows held out (by a hash of the row, so deterministic) and
    not trained on; 0 trains on every row (the validation loss is then measured on an even sample of the training
    rows: ``data.loss_sample``)."""
    eval_steps: int = 0
    """Also evaluate every this many optimizer steps (0: only at each epoch's end)."""
    seed: int = 42
    """Seed of LoRA initialisation and batch order."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third slower."""
    dtype: str = "auto"
    """Matrix products in "bfloat16" (autocast; the weights stay float32) or "float32"; "auto" is bfloat16 where
    the hardware computes it natively (a CPU with AVX512-BF16 or AMX, a GPU with bf16), else float32."""
    dedupe: str = "exact"
    """Cleaning of the snapshot (never of your tables): "exact" drops rows that repeat an earlier row's prompt and
    completion exactly; "near" also drops rows whose prompt is a near duplicate of an earlier, different prompt
    (MinHash LSH, Jaccard similarity of character 5-grams of at least 0.8); "none" keeps every row."""
    pii: str = "keep"
    """Personal data in prompts and completions (e-mail addresses, phone numbers, Luhn-valid card numbers, IBANs,
    IP addresses): "keep" trains on it as it is; "mask" replaces each value in the snapshot by a typed
    placeholder (<EMAIL>, <PHONE>, <CARD>, <IBAN>, <IP>); "refuse" makes CREATE fail, listing the rows."""
    drop_conflicting: bool = False
    """Drop every row whose prompt also appears with a different completion (contradictory targets)."""
    keep_best: bool = True
    """Store the adapter of the evaluation with the lowest validation loss (as transformers'
    load_best_model_at_end), not the last step's; DESCRIBE's best_step says which."""
    early_stopping_patience: int = 0
    """Stop after this many evaluations in a row without a lower validation loss (0: never stop early); evaluations
    come at each epoch's end and every eval_steps steps."""
    devices: int = 1
    """Training processes on this machine: one per GPU where CUDA is present, else CPU processes (gloo). Above 1,
    the job launches them with torchrun; the global batch is batch_size * gradient_accumulation_steps * devices *
    nodes (README "Scaling out")."""
    nodes: int = 1
    """Machines taking part; above 1 the others join through ``rdzv_endpoint`` (README "Scaling out")."""
    rdzv_endpoint: str | None = None
    """host:port of torchrun's c10d rendezvous, on this machine (the one running DuckDB) and reachable from the
    others; needed when nodes > 1 (one machine: torchrun --standalone picks a free local port)."""
    rdzv_timeout: int = 300
    """Seconds to wait for every node to join (and for a training process to report in) before the job fails."""
    strategy: str = "ddp"
    """How several processes share the work: "ddp" (a copy of the model in each, gradients averaged) or "fsdp"
    (each decoder layer's weights split across the processes, gathered per layer: for a model that does not fit
    one device; needs devices x nodes of at least 2)."""
    quantization: str = "none"
    """Base weights stored in "4bit" or "8bit" (QLoRA through bitsandbytes: CUDA only, pip install
    'duckdb-ft[gpu]'), or "none"."""
    method: str = "sft"
    """What the rows teach: "sft" (supervised: columns prompt, completion), "dpo" (preference pairs: prompt,
    chosen, rejected) or "kto" (thumbs up/down: prompt, completion, label BOOLEAN), as TRL's DPOTrainer and
    KTOTrainer (``ml/preference.py``)."""
    beta: float = 0.1
    """dpo and kto: how far the model may move from the reference (larger: closer to it)."""
    loss_type: str = "sigmoid"
    """dpo: "sigmoid" (DPO) or "ipo" (IPO, on log-probabilities averaged per completion token, as TRL)."""
    reference: str | None = None
    """dpo and kto: the reference policy, which is also where training starts: None is the base model (or, for a job
    that continues a fine-tuned model, that model); a fine-tuned model's name starts from its adapter and keeps it
    as the reference (the model the feedback was collected on)."""
    desirable_weight: float = 1.0
    """kto: weight of the rows labelled true."""
    undesirable_weight: float = 1.0
    """kto: weight of the rows labelled false."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def parse(cls, text: str | None) -> "TrainingOptions":
        """Parse and validate options JSON; every problem is gathered and raised at once."""
        opts = parse_options(cls, text, "FINETUNE", _CHECKS)
        problems = opts.scale_problems()
        if problems:
            raise InvalidArgument("invalid FINETUNE options: " + "; ".join(problems))
        return opts

    @property
    def world_size(self) -> int:
        """Training processes in all: devices per machine times machines."""
        return self.devices * self.nodes

    @property
    def global_batch(self) -> int:
        """Pairs per optimizer step over every process."""
        return self.batch_size * self.gradient_accumulation_steps * self.world_size

    def scale_problems(self) -> list[str]:
        """What is wrong between the scale-out options themselves (the machine's own limits are checked at CREATE
        by :func:`duckdb_ft.ml.distributed.check_machine`)."""
        out = []
        if self.nodes > 1 and not self.rdzv_endpoint:
            out.append(f'nodes {self.nodes} needs rdzv_endpoint: the "host:port" of this machine that the other '
                       'machines reach, e.g. "10.0.0.1:29400"')
        if self.method != "sft" and self.world_size > 1:
            out.append(f'method "{self.method}" trains in one process: leave devices and nodes at 1')
        if self.method != "sft" and (self.pii != "keep" or self.drop_conflicting):
            out.append(f'method "{self.method}" takes pii "keep" and drop_conflicting false (masking and conflicts '
                       'are defined on prompt and completion only): clean the preference rows in the query')
        if self.method != "dpo" and self.loss_type != "sigmoid":
            out.append(f'loss_type "{self.loss_type}" is a dpo loss: set method "dpo", or leave loss_type out')
        if self.method == "sft" and self.reference is not None:
            out.append('reference is the reference policy of methods "dpo" and "kto": set method, or leave it out')
        if self.strategy == "fsdp" and self.world_size < 2:
            out.append('strategy "fsdp" shards the model across processes and needs devices (times nodes) of at '
                       'least 2; one device trains unsharded: leave strategy "ddp"')
        return out

    def steps_per_epoch(self, n_examples: int) -> int:
        """Optimizer steps in one pass over ``n_examples`` training pairs: ``global_batch`` pairs a step, the last
        step shorter (as ``ceil(ceil(n / batch_size) / gradient_accumulation_steps)`` on one process)."""
        return math.ceil(math.ceil(n_examples / self.batch_size) / (self.gradient_accumulation_steps * self.world_size))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrainingOptions":
        return cls(**json.loads(text))


def parse_options(cls: type, text: str | None, what: str, checks: dict[str, Any]) -> Any:
    """``cls`` built from options JSON ``text``; ``checks`` maps each field to a check that returns a problem or None.

    NULL or '' gives the defaults. Raises InvalidArgument naming every problem (``what`` is FINETUNE or COMPLETE).
    """
    if text is None or not str(text).strip():
        return cls()
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise InvalidArgument(f"{what} options are not valid JSON ({e}): {str(text)[:80]!r}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{what} options must be a JSON object like '{{\"{next(iter(checks))}\": ...}}', "
                              f"got {type(raw).__name__}: {str(text)[:80]!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise InvalidArgument(f"unknown {what} option(s): {', '.join(unknown)}; valid options: {', '.join(sorted(names))}")
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in names:
        if name not in raw:
            continue
        v = raw[name]
        err = checks[name](v)
        if err:
            problems.append(f"{name} {err}, got {json.dumps(v)[:60]}")
        else:
            values[name] = float(v) if checks[name] in _FLOATS else v
    if problems:
        raise InvalidArgument(f"invalid {what} options: " + "; ".join(problems))
    return cls(**values)


def _response_format(v: Any) -> str | None:
    if v is None or isinstance(v, dict):
        return None  # the schema itself is checked by ml/schema.py, before generation
    return "must be an object {\"type\": \"json\", \"schema\": {...}}"


#: How a COMPLETE option changes generation, which decides how rows batch (``ml/complete.py``): ``KEY``, rows
#: batch together only with equal values (the option is in :meth:`CompleteOptions.batch_key`); ``PER_ROW``,
#: applied to each row on its own, so rows of different values share a batch (``max_tokens``: the row's token
#: budget, which the batching key holds; ``response_format``: the row's grammar, which masks that row's logits
#: alone); ``NONE``, it does not change what is generated.
KEY, PER_ROW, NONE = "key", "per_row", "none"


def _complete_option(default: Any, check: Any, batching: str) -> Any:
    """One COMPLETE option: its default, its check (a value to None or the problem), how it batches."""
    assert batching in (KEY, PER_ROW, NONE), batching
    return dataclasses.field(default=default, metadata={"check": check, "batching": batching})


@dataclass(frozen=True)
class CompleteOptions:
    """Generation options of COMPLETE / TRY_COMPLETE, named as Cortex COMPLETE names them. One field per option:
    adding an option is one field here (its default, check and batching); the parser, the error's list of valid
    options and COMPLETE's batching key are read from the fields."""

    temperature: float = _complete_option(0.0, _temperature, KEY)
    """0 is greedy decoding (deterministic); above 0 samples with that temperature."""
    top_p: float = _complete_option(1.0, _top_p, KEY)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (only with temperature > 0)."""
    max_tokens: int | None = _complete_option(None, _int(1), PER_ROW)
    """Most tokens to generate. Unset: up to the default cap, as far as the context allows; set: the prompt plus
    max_tokens must fit the model's context."""
    dtype: str = _complete_option("float32", _one_of("float32", "bfloat16"), KEY)
    """Matrix products of generation: "float32" (the reference) or "bfloat16" (autocast, the weights stay float32;
    only where the hardware computes bfloat16 natively: greedy answers may differ from float32's)."""
    response_format: str | None = _complete_option(None, _response_format, PER_ROW)
    """Cortex's structured output, ``{"type": "json", "schema": {...}}``, as JSON text (properties in their order):
    the answer is JSON valid against the schema, by constrained decoding (``ml/constrain.py``; the schema is checked
    by ``ml/schema.py`` before generation)."""

    @classmethod
    def parse(cls, text: str | None) -> "CompleteOptions":
        """Parse Cortex-style options JSON (``'{"temperature": 0.2, "max_tokens": 64}'``); NULL or '' is defaults."""
        opts = parse_options(cls, text, "COMPLETE", {f.name: f.metadata["check"] for f in dataclasses.fields(cls)})
        if isinstance(opts.response_format, dict):  # hashable: rows are grouped and deduplicated by their options
            opts = dataclasses.replace(opts, response_format=json.dumps(opts.response_format))
        return opts

    def batch_key(self) -> tuple:
        """The values of every option marked ``KEY``: rows batch together only where these are equal."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["batching"] == KEY)


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of FINETUNE 'EVALUATE': what to score, and how to generate (as COMPLETE)."""

    metrics: list | None = None
    """Metric names and user metrics ``{"name": ..., "sql": ...}``; None is the default set (names are checked by
    :mod:`duckdb_ft.evaluation.evaluate`, which knows them)."""
    temperature: float = 0.0
    """As COMPLETE: 0 is greedy decoding."""
    top_p: float = 1.0
    """As COMPLETE."""
    max_tokens: int | None = None
    """As COMPLETE: most tokens to generate per row (unset: up to COMPLETE's default cap)."""
    sql_database: str | None = None
    """sql_match: a DuckDB file to run the SQL on (opened read-only; the administrator only). Unset: copies of the
    tables and views the reference queries read in this database."""
    retention: bool = False
    """Also measure forgetting: each fine-tuned model against its base model on duckdb-ft's general prompt set."""
    bootstrap_samples: int = 1000
    """Resamples of the paired bootstrap."""
    seed: int = 0
    """Seed of the bootstrap resampling."""
    schema: dict | None = None
    """json_schema_valid: the JSON Schema the predictions must be valid against."""

    @classmethod
    def parse(cls, text: str | None) -> "EvaluateOptions":
        return parse_options(cls, text, "EVALUATE", _EVALUATE_CHECKS)

    def complete_options(self) -> CompleteOptions:
        return CompleteOptions(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens)


_CHECKS = {
    "max_epochs": _int(1, 10),
    "learning_rate": _lr,
    "lora_r": _int(1, 256),
    "lora_alpha": _int(1, 1024),
    "lora_dropout": _dropout,
    "target_modules": _modules,
    "batch_size": _int(1, 1024),
    "gradient_accumulation_steps": _int(1, 1024),
    "max_seq_length": _int(16, 32768),
    "warmup_ratio": _warm,
    "lr_scheduler_type": _one_of("linear", "cosine", "constant"),
    "weight_decay": _decay,
    "max_grad_norm": _clip,
    "validation_fraction": _frac,
    "eval_steps": _int(0, 1_000_000),
    "seed": _int(0, 2**31 - 1),
    "gradient_checkpointing": _bool,
    "dtype": _one_of("auto", "float32", "bfloat16"),
    "keep_best": _bool,
    "early_stopping_patience": _int(0, 1000),
    "dedupe": _one_of("exact", "near", "none"),
    "pii": _one_of("keep", "mask", "refuse"),
    "drop_conflicting": _bool,
    "devices": _int(1, 1024),
    "nodes": _int(1, 1024),
    "rdzv_endpoint": _endpoint,
    "rdzv_timeout": _int(5, 86400),
    "strategy": _one_of("ddp", "fsdp"),
    "quantization": _one_of("none", "4bit", "8bit"),
    "method": _one_of("sft", "dpo", "kto"),
    "beta": _positive,
    "loss_type": _one_of("sigmoid", "ipo"),
    "reference": lambda v: None if v is None or (isinstance(v, str) and v.strip()) else "must be a model name",
    "desirable_weight": _positive,
    "undesirable_weight": _positive,
}
assert set(_CHECKS) == set(TrainingOptions.names())
def _metric_list(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, list) or not v or not all(isinstance(m, (str, dict)) for m in v):
        return ('must be a non-empty list of metric names and {"name": ..., "sql": ...} objects, '
                'e.g. ["exact_match", "rouge_l"]')
    return None


def _path(v: Any) -> str | None:
    return None if v is None or (isinstance(v, str) and v.strip()) else "must be a path to a DuckDB file"


_EVALUATE_CHECKS = {"metrics": _metric_list, "temperature": _temperature, "top_p": _top_p, "max_tokens": _int(1),
                    "sql_database": _path, "retention": _bool, "bootstrap_samples": _int(100, 100_000),
                    "seed": _int(0, 2**31 - 1),
                    "schema": lambda v: None if v is None or isinstance(v, dict) else "must be a JSON Schema object"}
assert set(_EVALUATE_CHECKS) == {f.name for f in dataclasses.fields(EvaluateOptions)}
