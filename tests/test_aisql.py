"""AI_CLASSIFY and AI_FILTER on the tiny random model: the label is always one of the categories, the filter a
BOOLEAN usable in WHERE, whatever the model would say unconstrained; bad categories and configs are errors."""

from __future__ import annotations

import json

import pytest

from conftest import rows as q
from duckdb_ft.errors import InvalidArgument

TEXTS = "SELECT i, 'Ticket ' || i || ': my card was charged twice' AS t FROM range(9) t(i)"


def test_classify_returns_only_given_labels(con, tiny_model_path):
    rows = q(con, f"""SELECT ai_classify(t, [{{'label': 'billing', 'description': 'payments'}},
                                               {{'label': 'bugs', 'description': 'errors'}}],
                                          {{'model': ?}}) FROM ({TEXTS})""", tiny_model_path)
    for (text,) in rows:
        labels = json.loads(text)["labels"]
        assert len(labels) == 1 and labels[0] in ("billing", "bugs")
    multi = q(con, f"SELECT snowflake.cortex.ai_classify(t, ['a', 'b', 'c'], {{'model': ?, 'output_mode': 'multi'}}) "
                   f"FROM ({TEXTS})", tiny_model_path)
    for (text,) in multi:
        labels = json.loads(text)["labels"]
        assert set(labels) <= {"a", "b", "c"} and len(labels) <= 3


def test_filter_is_a_boolean_in_where(con, tiny_model_path):
    [(n,)] = q(con, f"SELECT count(*) FROM ({TEXTS}) WHERE ai_filter('Is this about money?', t, model => ?)",
               tiny_model_path)
    assert 0 <= n <= 9
    [(value,)] = q(con, "SELECT ai_filter('Is 2 even?', model := ?)", tiny_model_path)
    assert isinstance(value, bool)
    got = {r[0]: r[1] for r in q(con, "SELECT function_name, rows FROM finetune_usage()")}
    assert got["AI_FILTER"] == 10


@pytest.mark.parametrize("categories, config, message", [
    ("[]", "NULL", "non-empty list"),
    ("['a', 'a']", "NULL", "repeat a label"),
    ("['a', 'b']", "{'output_mode': 'many'}", "output_mode must be"),
    ("['a', 'b']", "{'temperature': 1}", "config takes"),
])
def test_classify_bad_arguments(con, tiny_model_path, categories, config, message):
    with pytest.raises(InvalidArgument, match=message):
        q(con, f"SELECT ai_classify('x', {categories}, {config})")
