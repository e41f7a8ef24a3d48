"""The training worker's tokenized data (ml/data.py TokenizedExamples): the same examples, statistics and batches
as tokenizing into Python lists, held as token ids in a memory-mapped buffer."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from duckdb_ft.ml import data


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    from duckdb_ft.ml import models

    return models.load_tokenizer(default_model_path)


def _pairs():
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    out = []
    for i in range(300):
        prompt = " ".join(words[(i + k) % 8] for k in range(1 + i % 13)) * (1 + (i % 50 == 0) * 40)  # a few long
        out.append((prompt, " ".join(words[(i * k) % 8] for k in range(1 + i % 7))))
    return out + [("", "empty prompt"), ("no completion", "")]


def test_tokenized_examples_equal_the_lists_and_plan_the_same_batches(tokenizer):
    pairs = _pairs()
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT unnest(?) AS prompt, unnest(?) AS completion",
                [[p for p, _ in pairs], [c for _, c in pairs]])
    stats, want_stats = data.TokenStats(), data.TokenStats()
    store = data.tokenize_reader(tokenizer, con.sql("SELECT * FROM t").to_arrow_reader(64), 96, stats)
    want = data.tokenize_pairs(tokenizer, pairs, 96, want_stats)
    assert want_stats.truncated > 0 and want_stats.dropped > 0  # the cases are there
    assert stats == want_stats and len(store) == len(want) == want_stats.examples
    assert [store[i] for i in range(len(store))] == want
    assert store[-1] == want[-1] and store.tokens == want_stats.tokens and store[1::3] == want[1::3]
    with pytest.raises(IndexError):
        store[len(store)]
    assert store.lengths.tolist() == [len(e.input_ids) for e in want]
    assert store.n_trained.tolist() == [e.n_trained for e in want]
    for seed in (0, 1):
        assert list(data.packed_batches(store, 8, seed)) == list(data.packed_batches(want, 8, seed))
    assert isinstance(store._ids, np.memmap) and store._ids.dtype == np.int32  # 4 bytes a token, paged from disk


def test_an_empty_reader_gives_no_examples(tokenizer):
    con = duckdb.connect()
    reader = con.sql("SELECT 'a' AS prompt, 'b' AS completion WHERE false").to_arrow_reader(64)
    store = data.tokenize_reader(tokenizer, reader, 96, data.TokenStats())
    assert len(store) == 0 and not store and list(data.packed_batches(store, 8, 0)) == []
