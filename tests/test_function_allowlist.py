"""DuckDB's whole function list against duckdb-ft's allow-list for user sessions (issue 30, item 2).

Every function DuckDB's catalog holds is classified in ``duckdb_ft/governance/function_list.py``: a new DuckDB
release's functions are in neither list, and these tests fail until someone classifies them.
"""

from __future__ import annotations

import duckdb_ft
from duckdb_ft.governance import function_list as fl
from duckdb_ft.governance.bound import SAFE_TABLE_FUNCTIONS
from duckdb_ft.governance.calls import BINDER_FUNCTIONS, REVIEWED_ADMIN, VOLATILE_ALLOWED, propose


def catalog():
    con = duckdb_ft.connect()
    try:
        raw = con.duckdb_connection
        rows = raw.execute("SELECT DISTINCT lower(function_name), function_type FROM duckdb_functions() "
                           "WHERE database_name = 'system' AND NOT starts_with(function_name, '__ft_')").fetchall()
        return rows, propose(raw)
    finally:
        con.close()


def test_every_function_of_duckdb_is_classified_for_user_sessions():
    rows, _ = catalog()
    unclassified = sorted(
        f"{name} ({kind})" for name, kind in rows
        if (kind in ("table", "table_macro") and name not in fl.TABLE_FUNCTIONS)
        or (kind == "pragma" and name not in fl.PRAGMAS)
        or (kind in ("scalar", "aggregate", "window", "macro")
            and name not in fl.ALLOWED_FUNCTIONS and name not in fl.ADMIN_FUNCTIONS))
    assert not unclassified, ("DuckDB has functions nobody classified for user sessions: add each to "
                              "duckdb_ft/governance/function_list.py (calls.propose suggests where): "
                              + ", ".join(unclassified))
    assert not fl.ALLOWED_FUNCTIONS & fl.ADMIN_FUNCTIONS


def test_the_allow_list_is_what_duckdbs_catalog_says_is_pure():
    """An allowed function is one DuckDB marks consistent and free of side effects (or reviewed as harmless), or a
    macro calling only such; a release that changes that shows here."""
    _, proposed = catalog()
    assert proposed["allowed"] == set(fl.ALLOWED_FUNCTIONS), (
        f"now allowed by the catalog: {sorted(proposed['allowed'] - fl.ALLOWED_FUNCTIONS)}; "
        f"no longer: {sorted(fl.ALLOWED_FUNCTIONS - proposed['allowed'])}")
    assert REVIEWED_ADMIN <= fl.ADMIN_FUNCTIONS and BINDER_FUNCTIONS <= fl.ALLOWED_FUNCTIONS
    assert not VOLATILE_ALLOWED & fl.ADMIN_FUNCTIONS
    for name in ("nextval", "currval", "setval", "current_setting", "current_database", "current_schema",
                 "version", "json_serialize_plan", "sleep_ms", "write_log", "pg_get_viewdef", "format_type"):
        assert name in fl.ADMIN_FUNCTIONS, name
    assert {"range", "generate_series", "unnest", "json_each", "json_tree"} <= fl.TABLE_FUNCTIONS
    assert not {"read_csv", "glob", "query", "duckdb_settings"} & SAFE_TABLE_FUNCTIONS
