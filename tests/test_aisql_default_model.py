"""The AISQL functions' default model: ``SET duckdb_ft_default_model`` (the administrator's, the model must exist)
is what AI_CLASSIFY and AI_FILTER run on without a ``model``; a role still needs USAGE on it; RESET goes back to
the built-in base model."""

from __future__ import annotations

import json

import pytest

from conftest import allow_base_model, one, rows as q, user_connection
from duckdb_ft.errors import NotFound, PermissionDenied


def test_default_model_setting_is_used_without_a_model_option(con, tiny_model_path):
    assert one(con, "SHOW duckdb_ft_default_model") == "smollm2-135m"
    allow_base_model(con, tiny_model_path)
    [(status,)] = con.execute("SET duckdb_ft_default_model = 'tiny'").fetchall()
    assert "set to tiny" in status
    assert one(con, "SHOW duckdb_ft_default_model") == "tiny"
    [(labels,)] = q(con, "SELECT ai_classify('my card was charged twice', ['billing', 'bugs'])")
    assert json.loads(labels)["labels"][0] in ("billing", "bugs")
    [(flag,)] = q(con, "SELECT ai_filter('Is 2 even?')")
    assert isinstance(flag, bool)
    used = {(r[0], r[1]) for r in q(con, "SELECT function_name, model_name FROM finetune_usage()")}
    assert used == {("AI_CLASSIFY", "tiny"), ("AI_FILTER", "tiny")}
    con.execute("RESET duckdb_ft_default_model").fetchall()
    assert one(con, "SHOW duckdb_ft_default_model") == "smollm2-135m"


def test_default_model_must_exist_and_is_set_by_the_administrator_only(con, tiny_model_path):
    with pytest.raises(NotFound, match="model 'nope' does not exist"):
        con.execute("SET duckdb_ft_default_model = 'nope'").fetchall()
    assert one(con, "SHOW duckdb_ft_default_model") == "smollm2-135m"
    allow_base_model(con, tiny_model_path)
    con.execute("CREATE ROLE analyst").fetchall()
    con.execute("GRANT ROLE analyst TO USER u1").fetchall()
    u1 = user_connection(con, "u1")
    with pytest.raises(PermissionDenied, match="administrator only"):
        u1.execute("SET duckdb_ft_default_model = 'tiny'").fetchall()
    assert one(con, "SHOW duckdb_ft_default_model") == "smollm2-135m"
    u1.close()


def test_default_model_still_needs_usage_for_the_role(con, tiny_model_path):
    con.execute(f"CREATE BASE MODEL secret_tiny FROM '{tiny_model_path}'").fetchall()
    con.execute("SET duckdb_ft_default_model = secret_tiny").fetchall()
    con.execute("CREATE ROLE analyst").fetchall()
    con.execute("GRANT ROLE analyst TO USER u1").fetchall()
    u1 = user_connection(con, "u1")
    with pytest.raises(PermissionDenied, match="does not exist or USAGE is required"):
        u1.execute("SELECT ai_filter('Is 2 even?')").fetchall()
    con.execute("GRANT USAGE ON BASE MODEL secret_tiny TO ROLE analyst").fetchall()
    [(flag,)] = u1.execute("SELECT ai_filter('Is 2 even?')").fetchall()
    assert isinstance(flag, bool)
    u1.close()


def test_a_user_cannot_set_the_default_model_by_any_path(con, tiny_model_path):
    con.execute("CREATE ROLE analyst").fetchall()
    con.execute("GRANT ROLE analyst TO USER u1").fetchall()
    con.execute("GRANT USAGE ON SCHEMA main TO ROLE analyst").fetchall()
    u1 = user_connection(con, "u1")
    for sql in ["SELECT ft_execute('SET duckdb_ft_default_model = ''smollm2-135m''')",
                "RESET duckdb_ft_default_model",
                "INSERT INTO duckdb_ft.settings VALUES ('duckdb_ft_default_model', 'x', 'u1', 0)",
                "UPDATE duckdb_ft.settings SET value = 'x'"]:
        with pytest.raises(PermissionDenied):
            u1.execute(sql).fetchall()
    assert one(u1, "SHOW duckdb_ft_default_model") == "smollm2-135m"
    u1.close()
