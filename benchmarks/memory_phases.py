"""Where FINETUNE 'ESTIMATE''s memory goes, phase by phase (``prepare_scale.py --memory``).

Each phase of ESTIMATE (CREATE's checks, the tokenizer's load, staging, exact/conflicting duplicates, the
near-duplicate pass's shingle table, its signatures and LSH buckets, its candidates and exact Jaccards, the
personal-data search, cleaning, leaks, token counting, the report, the time estimate) is marked by wrapping the
function that does it. For each phase:

- ``peak_rss_mib``: the process's peak resident memory during the phase (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs`` whenever a phase starts or ends, so each peak is the phase's own);
- ``duckdb_mib`` / ``duckdb_temp_mib``: the most ``duckdb_memory()`` (memory used by DuckDB's buffer manager) and
  ``duckdb_temporary_files()`` (spilled to the temporary directory) showed during the phase, summed over the
  database's instances (the user's, and ESTIMATE's scratch database where there is one), sampled every 0.1 s;
- ``arrow_mib``: the most pyarrow's allocator held (``pa.total_allocated_bytes()``), sampled likewise;
- ``python_mib``: with ``--tracemalloc``, the peak of the Python allocations traced during the phase (numpy's
  included; this slows the Python-heavy phases down).

A phase that runs several times (or whose inner phase returns to it) keeps the largest figures; ``seconds`` adds up.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import re
import threading
import time
import tracemalloc
from typing import Any, Callable, Iterator

#: (module, function, phase): the functions whose calls mark a phase. A function that a module does not have (the
#: code changed) is left out of the profile.
PHASES = [
    ("duckdb_ft.jobs.estimate", "check_request", "checks"),
    ("duckdb_ft.ml.models", "load_tokenizer", "tokenizer"),
    ("duckdb_ft.prep.stage", "stage", "staging"),
    ("duckdb_ft.prep.duplicates", "exact_and_conflicting", "exact/conflicting"),
    ("duckdb_ft.prep.duplicates", "near_duplicates", "near: shingle table"),
    ("duckdb_ft.prep.duplicates", "_signature_buckets", "near: signatures + buckets"),
    ("duckdb_ft.prep.clean", "_personal_data", "PII search"),
    ("duckdb_ft.prep.clean", "apply", "cleaning"),
    ("duckdb_ft.prep.stage", "settle_splits", "splits"),
    ("duckdb_ft.prep.estimate", "leaks", "leaks"),
    ("duckdb_ft.prep.estimate", "tokens", "token counting"),
    ("duckdb_ft.prep.estimate", "report", "report"),
    ("duckdb_ft.jobs.estimate", "_time_estimate", "time estimate"),
]
#: What a phase is called once an inner phase has returned to it.
AFTER = {"near: shingle table": "near: candidates + Jaccard"}


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Profile:
    """Per-phase memory of what runs between :meth:`start` and :meth:`stop` (see the module docstring)."""

    def __init__(self, cursors: list[Any], trace_python: bool = False):
        self.cursors = list(cursors)  # one cursor per DuckDB instance, for the sampler thread
        self.trace = trace_python
        self.stack: list[str] = []
        self.phases: dict[str, dict[str, float]] = {}
        self._since = 0.0
        self._lock = threading.Lock()
        self._cursors_lock = threading.Lock()
        self._done = threading.Event()
        self._patched: list[tuple[Any, str, Callable]] = []
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _entry(self, label: str) -> dict[str, float]:
        return self.phases.setdefault(label, {"seconds": 0.0, "peak_rss_mib": 0.0, "duckdb_mib": 0.0,
                                              "duckdb_temp_mib": 0.0, "arrow_mib": 0.0, "python_mib": 0.0})

    def _switch(self, new: list[str]) -> None:
        """Close the running phase's segment (its peaks), then start ``new``'s."""
        with self._lock:
            label = self.stack[-1] if self.stack else "outside ESTIMATE's phases"
            e = self._entry(label)
            now = time.perf_counter()
            e["seconds"] += now - self._since
            e["peak_rss_mib"] = max(e["peak_rss_mib"], _hwm_kib() / 1024)
            if self.trace:
                e["python_mib"] = max(e["python_mib"], tracemalloc.get_traced_memory()[1] / 2**20)
                tracemalloc.reset_peak()
            self.stack = new
            self._since = now
            _reset_hwm()

    def _wrap(self, fn: Callable, label: str) -> Callable:
        @functools.wraps(fn)
        def marked(*args: Any, **kwargs: Any) -> Any:
            outer = list(self.stack)
            self._switch(outer + [label])
            try:
                return fn(*args, **kwargs)
            finally:
                if outer:
                    outer[-1] = AFTER.get(outer[-1], outer[-1])
                self._switch(outer)
        return marked

    def _watch_scratch(self, fn: Callable) -> Callable:
        """ESTIMATE's scratch database (``prep.scratch.database``), sampled too while it is open."""
        @contextlib.contextmanager
        def watched(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with fn(*args, **kwargs) as con:
                cursor = con.cursor()
                with self._cursors_lock:
                    self.cursors.append(cursor)
                try:
                    yield con
                finally:
                    with self._cursors_lock:
                        self.cursors.remove(cursor)
                        cursor.close()
        return watched

    def _sample(self) -> None:
        import pyarrow as pa

        while not self._done.wait(0.1):
            used = temp = 0
            with self._cursors_lock:
                for cur in self.cursors:
                    u, t = cur.execute("SELECT sum(memory_usage_bytes), sum(temporary_storage_bytes) "
                                       "FROM duckdb_memory()").fetchall()[0]
                    used, temp = used + (u or 0), temp + (t or 0)
            with self._lock:
                e = self._entry(self.stack[-1] if self.stack else "outside ESTIMATE's phases")
                e["duckdb_mib"] = max(e["duckdb_mib"], used / 2**20)
                e["duckdb_temp_mib"] = max(e["duckdb_temp_mib"], temp / 2**20)
                e["arrow_mib"] = max(e["arrow_mib"], pa.total_allocated_bytes() / 2**20)

    def start(self) -> None:
        if importlib.util.find_spec("duckdb_ft.prep.scratch"):  # ESTIMATE's scratch database, where there is one
            mod = importlib.import_module("duckdb_ft.prep.scratch")
            self._patched.append((mod, "database", mod.database))
            mod.database = self._watch_scratch(mod.database)
        for module, name, label in PHASES:
            mod = importlib.import_module(module)
            fn = getattr(mod, name, None)
            if fn is None:
                continue
            self._patched.append((mod, name, fn))
            setattr(mod, name, self._wrap(fn, label))
        if self.trace:
            tracemalloc.start()
        self._since = time.perf_counter()
        _reset_hwm()
        self._thread.start()

    def stop(self) -> dict[str, dict[str, float]]:
        self._switch([])
        self._done.set()
        self._thread.join()
        if self.trace:
            tracemalloc.stop()
        for mod, name, fn in self._patched:
            setattr(mod, name, fn)
        return {k: {m: round(v, 1) for m, v in e.items()} for k, e in self.phases.items()}
