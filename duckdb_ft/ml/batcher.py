"""One decode loop per loaded base model, fed by a bounded queue: concurrent requests share its batches.

COMPLETE batches the rows of one call (``complete.py``, ``decode.py``); a server's requests come one by one, from
many clients at once. Here each request is queued, and one daemon thread per base model runs the continuous batch
of ``decode.py`` over whatever is queued: a request's row enters as a slot frees up (its prompt computed in a
group with the others admitted at that step), leaves at its end token, its ``max_tokens``, its timeout or its
cancellation, and rows of different adapters of the base share the batch (``lora_mix.py``). A prompt prefix seen
in recent requests (a system message, a template) is computed once and kept (``prefix.Store``): a later request
starting with it computes only its own tokens.

API (``duckdb_ft.ml.batcher``)::

    b = batcher_for(loaded)          # one per loaded base model, owned by the LoadedModel
    f = b.submit(request, adapter, on_token=send, timeout=30.0, seed=None, stop=())  # -> a Future
    f.result()                       # -> Completion(text, prompt_tokens, completion_tokens, finish_reason)
    b.cancel(f)                      # a client that went away: its slot is freed at the next step
    b.stats()                        # {"queue_depth", "active_slots", "slots", "steps", "tokens", ...}
    b.close()                        # fails what is queued or running with Interrupted, stops the thread

- ``request`` is a ``complete.Request`` (messages and ``CompleteOptions``); ``adapter`` the key of an attached
  adapter of ``loaded`` (what ``Engine.resolve_model`` returns) or None for the base model.
- ``submit`` checks the request at once and raises, changing nothing: ``InvalidArgument`` (the prompt does not fit
  the context, a response_format that cannot be met, bfloat16 without hardware support), ``ModelLoadError`` (the
  adapter is no longer attached: resolve the model again), ``QueueFull`` (more than ``queue_size`` requests wait:
  HTTP 429/503), ``Interrupted`` (closed). While queued or running its adapter is kept attached.
- The result is a ``batcher.Completion``: COMPLETE's ``complete.Completion`` (its text stripped as COMPLETE's) and
  ``finish_reason``, "stop" (an end token or a stop sequence) or "length" (``max_tokens`` reached). ``stop``:
  OpenAI's stop sequences; the row ends when one appears, its text cut before it.
- ``on_token(delta)`` is called from the decode thread with each new piece of text, in order; the pieces
  concatenate to the final ``Completion.text`` (leading and trailing whitespace, incomplete characters and what may
  begin a stop sequence are held back). It must be quick (hand the text to another thread or an event loop); if it raises, the request
  ends with that exception.
- ``timeout`` (seconds from ``submit``, queueing included): past it the future fails with ``RequestTimeout`` and
  the slot is freed.
- Greedy rows (temperature 0) give COMPLETE's tokens whatever shares the batch. Rows with temperature > 0 sample
  in the same batch, each with its own temperature and top_p (``seed``: the row's own generator, so its tokens do
  not depend on the other rows). Rows whose other generation options differ (``CompleteOptions.batch_key``:
  dtype) run in separate batches, stepped in turn.

A loop runs up to ``slots`` rows a step, by default COMPLETE's batch (``complete.BATCH_ROWS``, 64): on a CPU a
step's matrix products cost less per row the more rows share them (16 rows a step took about 1.5x the work per row
of 32: ``benchmarks/README.md``), so the loop takes every request in flight up to that. While rows run, waiting
requests are admitted in groups (``ADMIT_MIN``, or after ``ADMIT_WAIT`` steps): each
admission is a forward pass of its own. The thread starts at the first ``submit`` and exits after ``IDLE_EXIT``
seconds without work (the next ``submit`` starts another); each step holds ``loaded.lock`` only for its forward
pass, so COMPLETE and training still share the model.

COMPLETE over a table does not go through this loop: a statement hands over whole chunks, which ``complete.py``
batches up to 64 rows at a time with duplicate rows generated once (faster than the loop's batches of the requests
in flight: ``benchmarks/README.md``); the two interleave step by step on the model's lock. A model whose cache
``decode.py`` cannot batch (sliding windows) is served through ``complete.generate``, one admitted group at a time,
its text given to ``on_token`` at the end.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import Interrupted, InvalidArgument, ModelLoadError, QueueFull, RequestTimeout
from . import complete, constrain, decode, devices, prefix, running
from .models import LoadedModel

#: Seconds without a request after which the decode thread exits (a later submit starts a new one).
IDLE_EXIT = 30.0
#: While rows run, waiting requests join once this many wait (or all free slots can be filled), or once the oldest
#: has waited ``ADMIT_WAIT`` steps: a prompt's forward reads every weight, as a decode step does, so admitting one
#: row per step would make each step cost two.
ADMIT_MIN, ADMIT_WAIT = 8, 4


class TextStream:
    """A completion's text as deltas: each ``update`` gives the text added since the last, up to what is stable.

    The final text is ``complete.answer_text(tokens)`` (COMPLETE's), cut before the first of ``stops`` (OpenAI's stop
    sequences) once one appears (``final`` is then set). Held back until stable: leading whitespace, trailing
    whitespace (it may end the answer), a trailing incomplete UTF-8 character (U+FFFD until its last byte arrives)
    and a trailing piece that may begin a stop sequence; so the deltas, then ``rest``, concatenate to the final text.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()):
        self.tokenizer, self.stops, self.sent = tokenizer, [x for x in stops if x], ""
        self.final: str | None = None

    def update(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).lstrip()
        cuts = [i for i in (text.find(x) for x in self.stops) if i >= 0]
        if cuts:
            whole = text.rstrip()
            self.final = text[:min(cuts)] if min(cuts) < len(whole) else whole
            return ""
        text = text.rstrip("\ufffd")
        held = max((k for x in self.stops for k in range(1, len(x)) if text.endswith(x[:k])), default=0)
        text = text[:len(text) - held].rstrip()
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        out, self.sent = text[len(self.sent):], text
        return out

    def rest(self, final: str) -> str:
        """The delta that completes ``final`` (the Completion's text)."""
        return final[len(self.sent):] if final.startswith(self.sent) else ""


@dataclass
class Completion(complete.Completion):
    """COMPLETE's Completion and why it ended: "stop" (an end token or a stop sequence) or "length" (max_tokens)."""

    finish_reason: str = "stop"


@dataclass(eq=False)
class _Slot(running.Row):
    """A request's row in the decode loop."""

    request: complete.Request | None = None
    future: concurrent.futures.Future | None = None
    on_token: Callable[[str], None] | None = None
    deadline: float | None = None
    stream: TextStream | None = None
    key: tuple = ()
    ended: bool = False
    queued_at: int = 0  # the loop's step count when it was queued

    __eq__ = object.__eq__  # a slot is itself: two requests of the same prompt are two slots
    __hash__ = object.__hash__


class Batcher:
    """The decode loop of one loaded base model (see the module docstring)."""

    def __init__(self, loaded: LoadedModel, *, slots: int = complete.BATCH_ROWS, queue_size: int = 256):
        if slots < 1 or queue_size < 1:
            raise ValueError("slots and queue_size must be at least 1")
        self.loaded, self.slots, self.queue_size = loaded, slots, queue_size
        self._budget = decode.position_budget(loaded.model)  # positions the running rows may hold (decode.fitting)
        self._cond = threading.Condition()  # the queue, the batches' rows, the counters; never held for a forward
        self._pins = threading.Lock()
        self._waiting: deque[_Slot] = deque()
        self._batches: dict[tuple, running.Batch] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stop = set(complete.stop_ids(loaded.model, loaded.tokenizer))
        self._prefixes = prefix.Store()
        self._counts = {"steps": 0, "tokens": 0, "requests": 0, "prefill_tokens": 0, "prompt_tokens": 0}

    # ------------------------------------------------------------------------------------------- public

    def submit(self, request: complete.Request, adapter: str | None, *,
               on_token: Callable[[str], None] | None = None, timeout: float | None = None,
               seed: int | None = None, stop: Sequence[str] = ()) -> concurrent.futures.Future:
        """Queue one request; its future gives the ``Completion`` (see the module docstring for what it raises)."""
        import torch

        loaded, opts = self.loaded, request.options
        ids = complete.prompt_ids(loaded, request.messages)
        max_new = complete.fit_context(loaded, len(ids), opts.max_tokens)
        grammar = None
        if opts.response_format is not None:
            grammar = constrain.compile(loaded, opts.response_format, sorted(self._stop))
            constrain.check_budget(grammar, max_new)
        if opts.dtype == "bfloat16" and not devices.bfloat16_native(next(loaded.model.parameters()).device.type):
            raise InvalidArgument('dtype "bfloat16" needs hardware that computes bfloat16 natively; this one does '
                                  'not: use "float32" (the default)')
        generator = None
        if opts.temperature > 0 and seed is not None:
            generator = torch.Generator(device=next(loaded.model.parameters()).device).manual_seed(int(seed))
        request.ids, request.max_new, request.grammar = ids, max_new, grammar
        slot = _Slot(ids=ids, max_new=max_new, adapter=adapter,
                     constraint=constrain.start(grammar) if grammar is not None else None,
                     request=request, future=concurrent.futures.Future(), on_token=on_token,
                     deadline=None if timeout is None else time.monotonic() + timeout,
                     temperature=opts.temperature, top_p=opts.top_p, generator=generator,
                     stream=TextStream(loaded.tokenizer, stop) if on_token is not None or any(stop) else None,
                     key=_batch_key(opts))
        with self._cond:
            if self._closed:
                raise Interrupted(f"the decode loop of '{loaded.name}' is closed")
            if len(self._waiting) >= self.queue_size:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting for model '{loaded.name}' "
                                f"(the queue holds {self.queue_size}): retry later")
            if adapter is not None and adapter not in loaded.adapters:
                raise _gone(loaded, adapter)
            with self._pins:  # kept attached until the request ends (models.LoadedModel.evict_adapters)
                loaded.pinned[adapter] += 1
            slot.queued_at = self._counts["steps"]
            self._waiting.append(slot)
            self._counts["requests"] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"duckdb-ft decode {loaded.name}",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return slot.future

    def cancel(self, future: concurrent.futures.Future) -> None:
        """End a request whose client went away: its future is cancelled, its slot freed at the next step."""
        future.cancel()
        with self._cond:
            self._cond.notify()

    def stats(self) -> dict[str, int]:
        """queue_depth (waiting), active_slots (running rows), slots, and since creation: steps, tokens (generated),
        requests, prompt_tokens (of the admitted rows), prefill_tokens (computed: the rest came from a prefix)."""
        with self._cond:
            return {"queue_depth": len(self._waiting), "active_slots": self._running(), "slots": self.slots,
                    **self._counts}

    def close(self) -> None:
        """Stop the loop: queued and running requests fail with ``Interrupted``; later submits are refused."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._cond:
            left = list(self._waiting) + [r for b in self._batches.values() for r in b.rows]
            self._waiting.clear()
            self._batches.clear()
        for r in left:
            self._end(r, error=Interrupted(f"the decode loop of '{self.loaded.name}' was closed"))

    # ------------------------------------------------------------------------------------------- the loop

    def _running(self) -> int:
        return sum(len(b.rows) for b in self._batches.values())

    def _run(self) -> None:
        while True:
            with self._cond:
                idle_since = time.monotonic()
                while not self._closed and not self._waiting and not self._running():
                    if time.monotonic() - idle_since >= IDLE_EXIT:
                        self._thread = None
                        return
                    self._cond.wait(timeout=IDLE_EXIT)
                if self._closed:
                    self._thread = None
                    return
                expired = self._expired()
                admit = self._take()
            for r in expired:
                self._end(r, error=None if r.future.cancelled() else self._timeout(r))
            try:
                if admit:
                    self._admit(admit)
                for batch in list(self._batches.values()):
                    if batch.rows:
                        self._step(batch)
            except Exception as e:  # a failed forward fails the rows it held, never the loop
                with self._cond:
                    failed = admit + [r for b in self._batches.values() for r in b.rows]
                    self._batches.clear()
                for r in failed:
                    self._end(r, error=e)

    def _expired(self) -> list[_Slot]:
        """Waiting requests cancelled or past their deadline, taken out of the queue (under ``_cond``)."""
        now = time.monotonic()
        gone = [r for r in self._waiting if r.future.cancelled() or (r.deadline is not None and now > r.deadline)]
        if gone:
            self._waiting = deque(r for r in self._waiting if r not in gone)
        return gone

    def _take(self) -> list[_Slot]:
        """The waiting requests to admit now (``ADMIT_MIN``, ``ADMIT_WAIT``; no more than ``decode.fitting`` lets
        join the running rows), out of the queue."""
        running, out = self._running(), []
        free = self.slots - running
        if not self._waiting or not free:
            return out
        if running and len(self._waiting) < min(free, ADMIT_MIN) and (
                self._counts["steps"] - self._waiting[0].queued_at < ADMIT_WAIT):
            return out
        room = decode.fitting(list(itertools.islice(self._waiting, free)), self._budget,  # positions, too
                              [r for b in self._batches.values() for r in b.rows])
        while self._waiting and len(out) < room:
            out.append(self._waiting.popleft())
        return out

    def _timeout(self, r: _Slot) -> RequestTimeout:
        return RequestTimeout(f"the request to '{self.loaded.name}' timed out after {len(r.new)} generated tokens: "
                              "raise the timeout or lower max_tokens")

    def _end(self, r: _Slot, result: Any = None, error: BaseException | None = None) -> None:
        """The request's end (once): its adapter unpinned, its future given the result or error (neither: it was
        cancelled)."""
        if r.ended:
            return
        r.ended = True
        with self._pins:
            self.loaded.pinned[r.adapter] -= 1
            if self.loaded.pinned[r.adapter] <= 0:
                del self.loaded.pinned[r.adapter]
        try:
            if error is not None:
                r.future.set_exception(error)
            elif result is not None:
                r.future.set_result(result)
            else:
                r.future.cancel()
        except concurrent.futures.InvalidStateError:  # cancelled by its client meanwhile
            pass

    def _admit(self, group: list[_Slot]) -> None:
        if not decode.supported(self.loaded.model):
            self._generate_whole(group)
            return
        for key in dict.fromkeys(r.key for r in group):
            rows = [r for r in group if r.key == key]
            with self.loaded.lock:  # evicted since submit (a race the pin cannot close): refused, not computed
                gone = [r for r in rows if r.adapter is not None and r.adapter not in self.loaded.adapters]
            for r in gone:
                self._end(r, error=_gone(self.loaded, r.adapter))
            rows = [r for r in rows if r not in gone]
            if not rows:
                continue
            batch = self._batches.get(key) or running.Batch(self.loaded, key, self._prefixes)
            cache, mask, first, shared = batch.prefill(rows)
            live = self._record(rows, first)
            with self._cond:
                self._counts["prompt_tokens"] += sum(len(r.ids) for r in rows)
                self._counts["prefill_tokens"] += sum(len(r.ids) - shared for r in rows)
                batch.join(rows, live, cache, mask, first)
                self._batches[key] = batch

    def _step(self, batch: running.Batch) -> None:
        """One new token for every running row of ``batch``; finished, cancelled and timed-out rows leave it."""
        keep = self._record(batch.rows, batch.step())
        with self._cond:
            self._counts["steps"] += 1
            batch.retain(keep)

    def _record(self, rows: list[_Slot], tokens: Any) -> list[int]:
        """Each row's new token appended and streamed; the indices of the rows that go on (the others ended)."""
        going = set(decode._record(rows, tokens, self._stop))
        now, keep = time.monotonic(), []
        with self._cond:
            self._counts["tokens"] += len(rows)
        for k, r in enumerate(rows):
            n = len(r.new) - (1 if r.new[-1] in self._stop else 0)
            try:
                if r.stream is not None:
                    piece = r.stream.update(r.new[:n])
                    if piece and r.on_token is not None:
                        r.on_token(piece)
            except Exception as e:  # the client's callback failed: this request ends with its error
                self._end(r, error=e)
                continue
            if r.future.cancelled():
                self._end(r)
            elif k not in going or (r.stream is not None and r.stream.final is not None):
                self._finish(r, n)
            elif r.deadline is not None and now > r.deadline:
                self._end(r, error=self._timeout(r))
            else:
                keep.append(k)
        return keep

    def _finish(self, r: _Slot, n: int) -> None:
        stopped = r.stream is not None and r.stream.final is not None
        text = r.stream.final if stopped else complete.answer_text(self.loaded.tokenizer, r.new[:n])
        if r.request.options.response_format is not None:  # strict JSON, as COMPLETE's constrained answers
            text = constrain.as_json(text)
        done = Completion(text=text, prompt_tokens=len(r.ids), completion_tokens=n,
                          finish_reason="stop" if stopped or n < r.max_new else "length")
        try:
            if r.on_token is not None and (rest := r.stream.rest(text)):
                r.on_token(rest)
        except Exception as e:
            self._end(r, error=e)
            return
        r.request.result = done
        self._end(r, result=done)

    def _generate_whole(self, group: list[_Slot]) -> None:
        """A model decode.py cannot batch: the group through ``complete.generate``."""
        complete.generate(self.loaded, [r.request for r in group], adapters=[r.adapter for r in group])
        for r in group:
            if r.request.error is not None:
                self._end(r, error=r.request.error)
                continue
            c = r.request.result
            cuts = [i for i in (c.text.find(x) for x in (r.stream.stops if r.stream else ())) if i >= 0]
            done = Completion(text=c.text[:min(cuts)] if cuts else c.text, prompt_tokens=c.prompt_tokens,
                              completion_tokens=c.completion_tokens,
                              finish_reason="stop" if cuts or c.completion_tokens < r.max_new else "length")
            if r.on_token is not None and done.text:
                r.on_token(done.text)
            self._end(r, result=done)


def _batch_key(opts: complete.CompleteOptions) -> tuple:
    """The options that must be equal within one running batch: the batch key less what each row applies itself
    (temperature and top_p), with the dtype last (``Batcher._forward`` reads it)."""
    return (*dataclasses.replace(opts, temperature=0.0, top_p=1.0).batch_key(), opts.dtype)


def _gone(loaded: LoadedModel, adapter: str) -> ModelLoadError:
    return ModelLoadError(f"adapter {adapter} of '{loaded.name}' is no longer attached (more adapters were used "
                          "since than the model keeps): resolve the model again and resubmit")


_create_lock = threading.Lock()


def batcher_for(loaded: LoadedModel) -> Batcher:
    """The loaded base model's decode loop, made at the first call (one per ``LoadedModel``, which owns it)."""
    with _create_lock:
        if loaded.batcher is None:
            loaded.batcher = Batcher(loaded)
        return loaded.batcher
