"""COMPLETE / TRY_COMPLETE: batched generation over a chunk of rows.

The SQL layer hands over whole chunks (up to 2048 rows). Rows are grouped by base model (fine-tuned models of one
base generate in the same batches, mixed-adapter batches of ``lora_mix.py``) and options, sorted by adapter and
prompt length, and generated in left-padded batches of up to 64, so a table of prompts costs a few ``generate`` calls, not one per
row. Identical greedy rows are generated once. Prompts go through the model's chat template; the longest common
token prefix of a batch is computed once and its key/value cache shared by every row (``prefix.py``).
``temperature`` 0 (the default) is greedy and deterministic.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import FtError, InvalidArgument, ModelLoadError
from ..options import CompleteOptions
from . import constrain, decode, devices, lora_mix, models, prefix, schema
from .models import LoadedModel

#: Cortex's default is 4096 new tokens; on a CPU a runaway answer of that length costs minutes per row,
#: so duckdb-ft stops at 512 unless ``max_tokens`` asks for more.
DEFAULT_MAX_TOKENS = 512
BATCH_ROWS = 64
ROLES = ("system", "user", "assistant")


def parse_messages(value: str, *, encoded: bool) -> list[dict[str, str]]:
    """A row's prompt as chat messages.

    Two-argument COMPLETE passes the prompt string itself. The three-argument form passes its second argument
    JSON-encoded (``to_json``), so it may be a prompt string, a list of ``{role, content}`` structs, or a string
    holding a JSON array of such messages, as Cortex's prompt-or-history argument.
    """
    if not encoded:
        return [{"role": "user", "content": value}]
    raw = json.loads(value)
    if isinstance(raw, str):
        if not raw.lstrip().startswith("["):
            return [{"role": "user", "content": raw}]
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"messages are not valid JSON ({e.msg} at position {e.pos})") from e
    return _check_messages(raw)


def _check_messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidArgument("messages must be a non-empty array of {\"role\": ..., \"content\": ...} objects")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise InvalidArgument(f"message {i} must be an object with role and content, got {m!r}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidArgument(f"message {i} has role {role!r}; valid roles: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise InvalidArgument(f"message {i} needs a string 'content', got {content!r}")
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "assistant":
        raise InvalidArgument("the last message must be from the user (or system), not the assistant")
    return out


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Request:
    """One row to complete: chat messages and options; ``result`` or ``error`` is filled in."""

    messages: list[dict[str, str]]
    options: CompleteOptions
    ids: list[int] | None = None
    max_new: int = 0
    grammar: constrain.Grammar | None = None
    result: Completion | None = None
    error: FtError | None = None


def generate(
    loaded: LoadedModel, requests: Sequence[Request], adapter: str | None = None, *, fail_fast: bool = False,
    adapters: Sequence[str | None] | None = None,
) -> None:
    """Complete every request in place, in length-sorted left-padded batches; per-row errors go to ``.error``.

    ``adapter`` is the LoRA adapter of every row (None: the base model); ``adapters`` instead names one per row,
    and rows of different adapters of this base then share batches (``lora_mix.py``).
    With ``fail_fast`` the first row that cannot be generated raises before any generation is spent. Identical
    requests at temperature 0 (same adapter, messages and options) are generated once and share the result: greedy
    decoding gives them the same answer anyway, and tables repeat values. The longest common token prefix of a
    batch is computed once (``prefix.py``).
    """
    per_row = list(adapters) if adapters is not None else [adapter] * len(requests)
    if len(per_row) != len(requests):
        raise ValueError(f"{len(requests)} requests but {len(per_row)} adapters")
    used = list(dict.fromkeys(per_row))
    loaded.use_adapters(used)
    gone = [a for a in used if a is not None and a not in loaded.adapters]
    if gone:  # evicted by other calls since it was resolved: complete_rows and EVALUATE resolve it again first
        raise ModelLoadError(f"adapter(s) {', '.join(sorted(gone))} of '{loaded.name}' no longer attached (more "
                             f"than {models.MAX_ADAPTERS} adapters were used since): run the statement again")
    firsts: dict[tuple, Request] = {}
    copies: list[tuple[Request, Request]] = []
    unique: list[tuple[Request, str | None]] = []
    for r, a in zip(requests, per_row):
        if r.options.temperature == 0:
            key = (a, json.dumps(r.messages), r.options)
            if key in firsts:
                copies.append((r, firsts[key]))
                continue
            firsts[key] = r
        unique.append((r, a))
    try:
        _generate_unique(loaded, unique, fail_fast=fail_fast)
    finally:
        loaded.evict_adapters()  # once done: at most models.MAX_ADAPTERS stay, the least recently used go
    for r, first in copies:
        r.ids, r.max_new, r.result, r.error = first.ids, first.max_new, first.result, first.error
    with loaded.lock:
        loaded.stats["rows"] += len(requests)
        loaded.stats["prompt_tokens"] += sum(len(r.ids) for r in requests if r.ids is not None and r.error is None)


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens generation stops at, for COMPLETE and for the generation config of an export: the model's
    generation config's end tokens (the tokenizer's end token where it names none), and the padding token."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [i for i in (eos if isinstance(eos, list) else [eos]) if i is not None]
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in ids:
        ids.append(tokenizer.pad_token_id)
    return ids


def answer_text(tokenizer: Any, tokens: Sequence[int]) -> str:
    """An answer's text: its tokens decoded without special tokens and stripped, less a last character whose bytes
    were not all generated (``max_tokens`` may end a row inside a multi-byte character, which decodes as U+FFFD)."""
    return tokenizer.decode(list(tokens), skip_special_tokens=True).strip().rstrip("\ufffd").rstrip()


def prompt_ids(loaded: LoadedModel, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of ``messages`` through the model's chat template, with the assistant turn opened."""
    ids = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def fit_context(loaded: LoadedModel, prompt_tokens: int, max_tokens: int | None) -> int:
    """How many new tokens a prompt of ``prompt_tokens`` tokens generates in the model's context: ``max_tokens``,
    or without it up to DEFAULT_MAX_TOKENS, as far as the context allows (COMPLETE's and EVALUATE's one check).

    Raises:
        InvalidArgument: the prompt, or the prompt plus ``max_tokens``, does not fit the context.
    """
    ctx = loaded.context_length
    if max_tokens is None:
        if prompt_tokens >= ctx:
            raise InvalidArgument(f"prompt of {prompt_tokens} tokens does not fit the context of {ctx} tokens of "
                                  f"model '{loaded.name}': shorten the prompt")
        return min(DEFAULT_MAX_TOKENS, ctx - prompt_tokens)
    if prompt_tokens + max_tokens > ctx:
        raise InvalidArgument(f"prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the context of "
                              f"{ctx} tokens of model '{loaded.name}': shorten the prompt or lower max_tokens")
    return max_tokens


def _generate_unique(loaded: LoadedModel, requests: Sequence[tuple[Request, str | None]], *,
                     fail_fast: bool) -> None:
    todo: list[tuple[Request, str | None]] = []
    for r, a in requests:
        r.ids = prompt_ids(loaded, r.messages)
        try:
            r.max_new = fit_context(loaded, len(r.ids), r.options.max_tokens)
            if r.options.response_format is not None:  # its grammar, before anything is generated
                r.grammar = constrain.compile(loaded, r.options.response_format, stop_ids(loaded.model, loaded.tokenizer))
                constrain.check_budget(r.grammar, r.max_new)
        except InvalidArgument as e:
            r.error = e
        if r.error is None and r.options.dtype == "bfloat16" and not devices.bfloat16_native(
                next(loaded.model.parameters()).device.type):
            r.error = InvalidArgument(
                'dtype "bfloat16" needs hardware that computes bfloat16 natively (a CPU with AVX512-BF16 or AMX, a '
                'GPU with bf16); this one does not: use "float32" (the default)'
            )
        if r.error is not None:
            if fail_fast:
                raise r.error
        else:
            todo.append((r, a))

    # Same options batch together (every option that changes generation: CompleteOptions.batch_key, and the row's
    # token budget); within them, rows of one adapter, then similar lengths, so left padding stays small and a
    # batch mixes adapters only where one adapter's rows do not fill it.
    def kind(item: tuple[Request, str | None]) -> tuple:
        r = item[0]
        return (*r.options.batch_key(), r.max_new)

    todo.sort(key=lambda item: ([(v is None, v) for v in kind(item)], item[1] or "", len(item[0].ids)))
    if loaded.continuous and decode.supported(loaded.model):
        for key in dict.fromkeys(r.options.batch_key() for r, _ in todo if r.options.temperature == 0):
            # every greedy row of the same options, whatever its max_tokens, shares one continuous batch
            greedy = [item for item in todo if item[0].options.batch_key() == key]
            if greedy:  # longest max_tokens first: the rows admitted last, which set the tail, are the shortest
                greedy.sort(key=lambda item: (-item[0].max_new, item[1] or "", len(item[0].ids)))
                _generate_continuous(loaded, greedy)
        todo = [item for item in todo if item[0].options.temperature != 0]
    i, budget = 0, decode.position_budget(loaded.model)
    while i < len(todo):
        j = i + 1
        while j < len(todo) and j - i < BATCH_ROWS and kind(todo[j]) == kind(todo[i]):
            j += 1
        j = i + decode.fitting([r for r, _ in todo[i:j]], budget)  # long prompts: fewer rows a batch
        _generate_batch(loaded, [r for r, _ in todo[i:j]], [a for _, a in todo[i:j]])
        i = j


def _generate_batch(loaded: LoadedModel, batch: Sequence[Request], adapters: Sequence[str | None]) -> None:
    """One ``generate`` call: the batch's shared prefix from a cache, rows of several adapters mixed if need be."""
    import torch

    tok, model = loaded.tokenizer, loaded.model
    opts = batch[0].options
    pad = tok.pad_token_id
    seqs = [r.ids for r in batch]
    shared = prefix.shared_length(seqs)
    input_ids, attention = prefix.layout(seqs, shared, pad)
    width = input_ids.shape[1]
    kwargs: dict[str, Any] = dict(max_new_tokens=batch[0].max_new, pad_token_id=pad)
    if opts.temperature > 0:
        kwargs.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if any(r.grammar is not None for r in batch):  # each row's grammar masks its logits, then sampling as asked
        states = [constrain.start(r.grammar) if r.grammar is not None else None for r in batch]
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([constrain.Processor(
            states, width, batch[0].max_new, opts.temperature, opts.top_p)])
        if opts.temperature > 0:
            kwargs.update(temperature=1.0, top_p=1.0)
    mixed = len(set(adapters)) > 1
    names = [a or lora_mix.BASE for a in adapters] if mixed else None
    dev = next(model.parameters()).device
    with loaded.lock, torch.inference_mode(), _precision(model, opts.dtype):
        mixer = lora_mix.Mixer(model, adapters) if mixed else None
        with mixer if mixer is not None else _adapter(model, adapters[0]):
            if shared:
                key, kwargs[key] = prefix.prefix_cache(model, seqs[0][:shared], len(batch), names, mixer)
            if mixer is not None:
                kwargs.update(mixer.kwargs(adapters))
            out = model.generate(input_ids=input_ids.to(dev), attention_mask=attention.to(dev), **kwargs)
    with loaded.lock:
        loaded.stats["generated"] += len(batch)
        loaded.stats["generate_calls"] += 1
        loaded.stats["prefill_tokens"] += (sum(len(s) - shared for s in seqs)
                                           + shared * (len(set(adapters)) if shared else 0))
    out = out[:, width:].cpu()
    stop = set(stop_ids(model, tok))
    for k, r in enumerate(batch):
        new = out[k].tolist()
        n = next((t for t, x in enumerate(new) if x in stop), len(new))
        text = answer_text(tok, new[:n])
        text = constrain.as_json(text) if r.grammar is not None else text
        r.result = Completion(text=text, prompt_tokens=len(r.ids), completion_tokens=n)


def _generate_continuous(loaded: LoadedModel, items: Sequence[tuple[Request, str | None]]) -> None:
    """Greedy rows through ``decode.greedy``: finished rows leave the batch, waiting ones take their slots."""
    import torch

    tok, model = loaded.tokenizer, loaded.model
    rows = [decode.Row(ids=r.ids, max_new=r.max_new, adapter=a,
                       constraint=constrain.start(r.grammar) if r.grammar is not None else None) for r, a in items]
    adapters = list(dict.fromkeys(a for _, a in items))
    mixed = len(adapters) > 1
    stop = set(stop_ids(model, tok))
    with loaded.lock, torch.inference_mode(), _precision(model, items[0][0].options.dtype):
        with contextlib.nullcontext() if mixed else _adapter(model, adapters[0]):
            shared = decode.greedy(model, rows, slots=BATCH_ROWS, pad=tok.pad_token_id, stop=stop, mixed=mixed)
    with loaded.lock:
        loaded.stats["generated"] += len(rows)
        loaded.stats["generate_calls"] += 1
        loaded.stats["prefill_tokens"] += (sum(len(r.ids) - shared for r in rows)
                                           + shared * (len(adapters) if mixed else 1))
    for (r, _), row in zip(items, rows):
        n = next((t for t, x in enumerate(row.new) if x in stop), len(row.new))
        text = answer_text(tok, row.new[:n])
        text = constrain.as_json(text) if r.grammar is not None else text
        r.result = Completion(text=text, prompt_tokens=len(r.ids), completion_tokens=n)


def _precision(model: Any, dtype: str) -> Any:
    """bfloat16 autocast for ``dtype`` "bfloat16" (the cached weights stay float32, shared with training), else
    nothing: float32 throughout."""
    import torch

    dev = next(model.parameters()).device.type
    if dtype == "bfloat16":
        return torch.autocast(dev, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _adapter:
    """Context manager: run ``model`` with the named LoRA adapter active, or with adapters disabled for None."""

    def __init__(self, model: Any, name: str | None):
        self.model, self.name, self._ctx = model, name, None

    def __enter__(self):
        if not hasattr(self.model, "peft_config"):
            return self
        if self.name is None:
            self._ctx = self.model.disable_adapter()
            self._ctx.__enter__()
        else:
            self.model.set_adapter(self.name)
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
        return False


def cortex_json(model: str, c: Completion, structured: bool = False) -> str:
    """The JSON that Cortex COMPLETE returns when given options; with a response format (``structured``) also
    Cortex's ``structured_output``: ``[{"raw_message": <the JSON answer>, "type": "json"}]``."""
    return json.dumps({
        "choices": [{"messages": c.text}],
        **({"structured_output": [{"raw_message": json.loads(c.text), "type": "json"}]} if structured else {}),
        "created": int(time.time()),
        "model": model,
        "usage": {
            "completion_tokens": c.completion_tokens,
            "prompt_tokens": c.prompt_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens,
        },
    })


Resolver = Callable[[str], "tuple[LoadedModel, str | None]"]


def complete_rows(
    resolve: Resolver,
    models: Sequence[str],
    prompts: Sequence[str | None],
    options: Sequence[str | None] | None,
    *,
    try_mode: bool,
    on_request: Callable[[int, Request], None] | None = None,
) -> list[str | None]:
    """COMPLETE over a chunk: one output per row (text, or Cortex JSON when ``options`` is given).

    ``resolve`` maps a model name to (loaded base model, adapter name or None). In ``try_mode`` any row's
    error becomes NULL for that row; otherwise the first error is raised. ``on_request(i, request)`` is told of
    each row's request as it is parsed (its ``result`` holds the token counts once generated: usage history).
    """
    out: list[str | None] = [None] * len(prompts)
    parsed: dict[str, list[tuple[int, Request]]] = {}
    for i, (m, p) in enumerate(zip(models, prompts)):
        if p is None or m is None:
            continue
        try:
            opts = CompleteOptions.parse(options[i]) if options is not None else CompleteOptions()
            schema.parse_response_format(opts.response_format)  # an unsupported schema fails before generation
            req = Request(parse_messages(p, encoded=options is not None), opts)
        except Exception:  # TRY_COMPLETE: any failure of a row is NULL (RecursionError of a deep JSON, ...)
            if try_mode:
                continue
            raise
        parsed.setdefault(m, []).append((i, req))
        if on_request is not None:
            on_request(i, req)
    # Fine-tuned models of one base share its loaded module: their rows generate together, in mixed batches.
    bases: dict[int, tuple[LoadedModel, list[tuple[int, Request, str | None, str]]]] = {}
    for model_name, rows in parsed.items():
        try:
            loaded, adapter = resolve(model_name)
        except Exception:  # an OSError of a 100,000-character name, ...
            if try_mode:
                continue
            raise
        group = bases.setdefault(id(loaded), (loaded, []))[1]
        group.extend((i, r, adapter, model_name) for i, r in rows)
    for loaded, rows in bases.values():
        try:
            for model_name in {m for _, _, a, m in rows if a is not None and a not in loaded.adapters}:
                resolve(model_name)  # other calls' models evicted its adapter since (models.MAX_ADAPTERS): attach
            generate(loaded, [r for _, r, _, _ in rows], fail_fast=not try_mode, adapters=[a for _, _, a, _ in rows])
        except Exception:
            if try_mode:
                continue
            raise
        for i, r, _, model_name in rows:
            if r.error is not None:
                if try_mode:
                    continue
                raise r.error
            out[i] = (cortex_json(model_name, r.result, r.options.response_format is not None) if options is not None
                      else r.result.text)
    return out
