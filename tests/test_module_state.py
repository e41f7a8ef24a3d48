"""State that lives longer than a call has an owner or a bound: adapters attached to a cached base model (least
recently used evicted past ``models.MAX_ADAPTERS``), the cached base models (``models.MAX_BASE_MODELS``), an
engine per open database (gone when it closes), weight digests (``lineage.MAX_HASHES``), COMPLETE's
counters and decoding switch (the loaded model's), and the decode loop across requests (``ml/batcher.py``: one per
loaded model, its queue, prefix store and thread bounded)."""

from __future__ import annotations

import ast
import gc
import json
import shutil
import warnings
import weakref
from pathlib import Path

import duckdb
import pytest

import duckdb_ft
from duckdb_ft.jobs import lineage
from duckdb_ft.ml import complete as completion, models
from duckdb_ft.options import CompleteOptions
from duckdb_ft.surface import engine as engines

#: Every module-level mutable state of the package, with its owner or its bound: a new one names them here.
STATE = {
    "duckdb_ft.ml.models._loaded": "LRU of MAX_BASE_MODELS base models, each with MAX_ADAPTERS adapters (LRU)",
    "duckdb_ft.ml.models._load_locks": "one per load under way, dropped when it ends",
    "duckdb_ft.surface.engine._engines": "weak; an engine unregistered when its database closes",
    "duckdb_ft.surface.connection._ROOTS": "weak: the connections connect() opened, closed at interpreter exit",
    "duckdb_ft.surface.cursors._sessions": "weak keys: each installed connection's session goes with it",
    "duckdb_ft.surface.cursors._inherit": "set once, by the first install(): what a cursor's session is made by",
    "duckdb_ft.jobs.lineage._hashes": "the MAX_HASHES digests computed last",
    "duckdb_ft.jobs.runner._RUNNERS": "weak set: the live job runners, stopped at exit",
    "duckdb_ft.ml.chat_tokens._ENCODERS": "weak keys: each encoder goes with its tokenizer",
    "duckdb_ft.ml.constrain._COMPILERS": "weak keys: each grammar compiler goes with its tokenizer, with its "
                                         "MAX_GRAMMARS grammars used last",
    "duckdb_ft.ml.kernels._LAST_SEGMENTS": "one entry: a weak reference to the last mask",
    "duckdb_ft.evaluation.evaluate.RUNNING": "one entry per evaluate() call running, removed in its finally",
    "duckdb_ft.catalog.migrations.MIGRATIONS": "filled once at import by @migration, then constant",
    "duckdb_ft.governance.calls._TYPES": "one entry: DuckDB's type names for the version this process runs",
    "duckdb_ft.governance.credentials._VERIFIED": "the MAX_VERIFIED digests of tokens verified last",
    "duckdb_ft.governance.credentials.BACKOFF": "an LRU of at most Backoff.size keys, each forgotten after its "
                                                "window",
}
#: State held by objects rather than modules, with its owner and bound; the test below checks each.
OWNED = {
    "LoadedModel.batcher": "one Batcher per loaded base model (batcher_for), gone with it",
    "Batcher._waiting": "at most queue_size requests; more are refused with QueueFull",
    "Batcher._batches": "at most slots running rows, in one batch per options key",
    "Batcher._prefixes": "prefix.Store: its max_entries entries used last, max_tokens tokens in all",
    "Batcher._thread": "started by submit, exits after batcher.IDLE_EXIT seconds idle or at close()",
    "LoadedModel.pinned": "one count per adapter of a queued or running request, dropped when it ends",
}
MUTABLE = {"dict", "list", "set", "OrderedDict", "Counter", "deque", "defaultdict", "WeakValueDictionary",
           "WeakKeyDictionary", "WeakSet", "Backoff"}
CONFIG = {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}


def _adapter_blobs(path: str, names: list[str]) -> dict[str, bytes]:
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(path)
        donor = get_peft_model(base, LoraConfig(**CONFIG, init_lora_weights=False))
        out[name] = models.adapter_to_bytes({k: v * 3 for k, v in get_peft_model_state_dict(donor).items()})
    return out


def _drop(loaded: models.LoadedModel, key: str) -> None:
    """What another call's eviction does to ``key``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's "was active"
        loaded.model.delete_adapter(key)
    del loaded.adapters[key]


def test_adapters_past_the_bound_are_evicted_oldest_first_and_complete_still_answers(tiny_model_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(models, "MAX_ADAPTERS", 2)
    loaded = models.LoadedModel(name="tiny", path=tiny_model_path, tokenizer=models.load_tokenizer(tiny_model_path),
                                model=AutoModelForCausalLM.from_pretrained(tiny_model_path).eval())
    blobs = _adapter_blobs(tiny_model_path, ["ft_a", "ft_b", "ft_c"])
    attached = []

    evict_after_resolving = []

    def resolve(name: str) -> tuple[models.LoadedModel, str]:  # as Engine.resolve_model: attach when missing
        if name not in loaded.adapters:
            attached.append(name)
            models.attach_adapter(loaded, name, CONFIG, blobs[name])
        loaded.use_adapters([name])
        if name in evict_after_resolving:  # another call's models push it out before this one generates
            evict_after_resolving.remove(name)
            _drop(loaded, name)
        return loaded, name

    def answers(names: list[str]) -> list[str]:
        out = completion.complete_rows(resolve, names, [json.dumps("Count the orders.")] * len(names),
                                       ['{"max_tokens": 5}'] * len(names), try_mode=False)
        return [json.loads(o)["choices"][0]["messages"] for o in out]

    first = answers(["ft_a", "ft_b", "ft_c"])  # one call needs all three: none is evicted while it runs
    assert list(loaded.adapters) == ["ft_b", "ft_c"] and sorted(loaded.model.peft_config) == ["ft_b", "ft_c"]
    assert answers(["ft_a"]) == first[:1]  # attached again from its blob, the same answer
    assert list(loaded.adapters) == ["ft_c", "ft_a"] and attached == ["ft_a", "ft_b", "ft_c", "ft_a"]
    loaded.use_adapters(["ft_c"])
    assert loaded.evict_adapters() == [] and list(loaded.adapters) == ["ft_a", "ft_c"]

    # Another call evicts an adapter between resolving and generating: attached again, the same answer.
    evict_after_resolving.append("ft_a")
    assert answers(["ft_a"]) == first[:1] and attached[-1] == "ft_a" and len(attached) == 5
    _drop(loaded, "ft_a")  # and where generate finds one missing all the same: a clear error
    with pytest.raises(duckdb_ft.ModelLoadError, match="no longer attached"):
        completion.generate(loaded, [completion.Request([{"role": "user", "content": "hi"}], CompleteOptions())],
                            "ft_a")


def test_cached_base_models_past_the_bound_are_dropped_least_recently_used_first(tiny_model_path, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(models, "MAX_BASE_MODELS", 2)
    copies = [shutil.copytree(tiny_model_path, tmp_path / f"tiny{i}") for i in range(3)]
    a, b = models.load(str(copies[0])), models.load(str(copies[1]))
    assert models.load(str(copies[0])) is a  # a used last: b is the one dropped next
    models.load(str(copies[2]))
    assert models.load(str(copies[0])) is a and models.load(str(copies[1])) is not b
    assert len(models._loaded) == 2 and not models._load_locks  # no load under way: no lock kept


def test_complete_counts_and_decodes_per_loaded_model(tiny_model_path):
    loaded = models.load(tiny_model_path)
    before = dict(loaded.stats)
    reqs = [completion.Request([{"role": "user", "content": "hi"}], CompleteOptions(max_tokens=2)) for _ in range(3)]
    completion.generate(loaded, reqs)
    assert loaded.stats["rows"] - before.get("rows", 0) == 3
    assert loaded.stats["generated"] - before.get("generated", 0) == 1  # identical greedy rows: generated once
    assert loaded.continuous is True


def test_closing_a_database_drops_its_engine():
    con = duckdb_ft.connect()
    engine_id = con.session.engine.id
    other = con.cursor()  # another connection of the same database: the engine stays while connect()'s is open
    other.close()
    assert engine_id in engines._engines
    con.close()
    assert engine_id not in engines._engines

    raw = duckdb.connect()  # installed on a plain DuckDB connection: gone with its database
    duckdb_ft.install(raw)
    ref = weakref.ref(engines.find_engine(raw))
    raw.close()
    del raw
    gc.collect()
    assert ref() is None


def test_weight_digests_keep_the_latest_few(tmp_path, monkeypatch):
    monkeypatch.setattr(lineage, "MAX_HASHES", 2)
    monkeypatch.setattr(lineage, "_hashes", {})
    for i in range(3):
        (tmp_path / f"m{i}").mkdir()
        (tmp_path / f"m{i}" / "model.safetensors").write_bytes(bytes([i]))
        lineage.weights_hash(str(tmp_path / f"m{i}"))
    assert [k[0] for k in lineage._hashes] == [str(tmp_path / "m1"), str(tmp_path / "m2")]


def _module_state() -> set[str]:
    """Module-level names that hold state: empty containers filled later, containers under lower-case names, and
    names a function rebinds (``global``)."""
    package = Path(duckdb_ft.__file__).parent
    found = set()
    for path in package.rglob("*.py"):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        rebound = {n for node in ast.walk(tree) if isinstance(node, ast.Global) for n in node.names}
        for node in tree.body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            v = node.value
            call = getattr(v.func, "id", None) or getattr(v.func, "attr", None) if isinstance(v, ast.Call) else None
            container = isinstance(v, (ast.Dict, ast.List, ast.Set)) or call in MUTABLE
            empty = container and not (getattr(v, "keys", None) or getattr(v, "elts", None) or getattr(v, "args", None))
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                name = getattr(target, "id", "")
                if name and name != "__all__" and (empty or name in rebound or
                                                   (container and not name.lstrip("_").isupper())):
                    found.add(f"{module}.{name}")
    return found


def test_every_module_level_state_has_an_owner_or_a_bound():
    assert _module_state() == set(STATE), "module-level state: give it an owner or a bound, and name it in STATE"


def test_the_decode_loop_is_owned_by_its_loaded_model_and_bounded(tiny_model_path, monkeypatch):
    from duckdb_ft.ml import batcher as batching

    monkeypatch.setattr(batching, "IDLE_EXIT", 0.1)
    loaded = models.LoadedModel(name="tiny", path=tiny_model_path, tokenizer=models.load_tokenizer(tiny_model_path),
                                model=models.load(tiny_model_path).model)
    b = batching.batcher_for(loaded)
    assert batching.batcher_for(loaded) is b is loaded.batcher
    store = b._prefixes
    prompts = [f"Question number {i} about a long shared preamble of several words." for i in range(12)]
    futures = [b.submit(completion.Request([{"role": "user", "content": p}], CompleteOptions(max_tokens=2)), None)
               for p in prompts]
    assert all(f.result(timeout=60).completion_tokens == 2 for f in futures)
    assert 0 < len(store.entries) <= store.max_entries and sum(len(e[2]) for e in store.entries) <= store.max_tokens
    assert len(b._waiting) == 0 and sum(len(x.rows) for x in b._batches.values()) == 0 and not loaded.pinned
    from conftest import wait_for

    wait_for(lambda: b._thread is None, what="the idle decode thread's exit")
    assert set(OWNED) >= {"Batcher." + n for n in ("_waiting", "_batches", "_prefixes", "_thread")}
    b.close()
