"""The real default model (SmolLM2-135M-Instruct) through SQL."""

from __future__ import annotations

import pytest

import duckdb_ft

pytestmark = pytest.mark.real_model


def test_capital_of_france_through_connect(default_model_path):
    con = duckdb_ft.connect()
    [(answer,)] = con.sql("SELECT complete('smollm2-135m', 'What is the capital of France?')").fetchall()
    assert "Paris" in answer
    con.close()
