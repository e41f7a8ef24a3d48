"""Model versions (issue 16): FINETUNE with the option ``version`` adds a version to a model; ``m`` means its
default version and ``m@v1`` that version wherever a model is named; ALTER MODEL m SET DEFAULT VERSION rolls
back; SHOW VERSIONS IN MODEL; DROP MODEL m VERSION v (never the default); grants are the model's and cover every
version; models made before versions existed are version v1 of themselves."""

from __future__ import annotations

import json
import shutil

import duckdb
import pytest

import duckdb_ft
from conftest import LEARN, catalog_counts, create, describe, one, rows, wait

GREEDY = "'{\"max_tokens\": 4, \"temperature\": 0}'"


def answer(con, model, prompt):
    return one(con, f"SELECT complete(?, ?, {GREEDY})::JSON ->> '$.choices[0].messages'", model, prompt)


def table(con, sql):
    rel = con.execute(sql)
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r)) for r in rel.fetchall()]


@pytest.fixture(scope="module")
def trained_versions(tmp_path_factory, tiny_model_path):
    """A database file with model bot: v1 trained to answer 'alpha', v2 (the default) to answer 'beta'. Trained
    once; each test gets a copy (``versioned``)."""
    path = str(tmp_path_factory.mktemp("versions") / "v.duckdb")
    con = duckdb_ft.connect(path)
    con.execute("CREATE TABLE facts AS SELECT 'Question ' || i AS p, 'alpha alpha' AS a, 'beta beta' AS b "
                "FROM range(12) t(i)")
    j1 = create(con, "bot", tiny_model_path, "SELECT p AS prompt, a AS completion FROM facts", options=LEARN)
    assert wait(con, j1) == "SUCCESS"
    j2 = create(con, "bot", tiny_model_path, "SELECT p AS prompt, b AS completion FROM facts",
                options={**LEARN, "version": True})
    assert wait(con, j2) == "SUCCESS"
    con.close()
    return path, j1, j2


@pytest.fixture
def versioned(trained_versions, tmp_path):
    """A copy of ``trained_versions``'s database for one test, which may change it as it likes."""
    path, j1, j2 = trained_versions
    copy = tmp_path / "v.duckdb"
    shutil.copyfile(path, copy)
    return str(copy), j1, j2


@pytest.mark.slow
def test_rolling_back_the_default_version_changes_what_complete_answers(versioned):
    path, j1, j2 = versioned
    con = duckdb_ft.connect(path)
    try:
        versions = table(con, "SHOW VERSIONS IN MODEL bot")
        assert [(v["name"], v["is_default_version"], v["job_id"]) for v in versions] == \
            [("v1", False, j1), ("v2", True, j2)]
        assert "beta" in answer(con, "bot", "Question 3") and "alpha" in answer(con, "bot@v1", "Question 3")
        assert "beta" in answer(con, "main.bot@v2", "Question 3")
        con.execute("ALTER MODEL bot SET DEFAULT VERSION v1")
        assert "alpha" in answer(con, "bot", "Question 3")
        assert table(con, "DESCRIBE MODEL bot")[0]["version"] == "v1"
        assert table(con, "DESCRIBE MODEL bot@v2")[0]["job_id"] == j2
        assert table(con, "SHOW MODELS")[0]["default_version"] == "v1"
        con.execute("ALTER MODEL bot SET DEFAULT_VERSION = 'v2'")  # Snowflake's spelling
        assert "beta" in answer(con, "bot", "Question 3")
        assert table(con, "SHOW MODELS")[0]["versions"] == 2
        # TRY_COMPLETE and the Cortex name take versions too.
        assert "alpha" in one(con, "SELECT try_complete('bot@v1', 'Question 3')")
        assert "alpha" in one(con, "SELECT snowflake.cortex.complete('bot@v1', 'Question 3')")
    finally:
        con.close()


@pytest.mark.slow
def test_bad_versions_are_clear_errors_that_change_nothing(versioned, tiny_model_path):
    path, _, _ = versioned
    con = duckdb_ft.connect(path)
    try:
        before = catalog_counts(con), table(con, "SHOW VERSIONS IN MODEL bot")
        with pytest.raises(duckdb.Error, match="model 'main.bot' has no version 'v9': SHOW VERSIONS IN MODEL"):
            con.execute("SELECT complete('bot@v9', 'hi')").fetchall()
        assert one(con, "SELECT try_complete('bot@v9', 'hi')") is None
        for sql in ("ALTER MODEL bot SET DEFAULT VERSION v9", "DESCRIBE MODEL bot@v9", "DROP MODEL bot VERSION v9"):
            with pytest.raises(duckdb_ft.NotFound, match="has no version 'v9'"):
                con.execute(sql)
        with pytest.raises(duckdb_ft.InvalidArgument, match="v2 is the default version of model main.bot and "
                                                           "cannot be dropped: ALTER MODEL main.bot SET DEFAULT "
                                                           "VERSION v1 first"):
            con.execute("DROP MODEL bot VERSION v2")
        with pytest.raises(duckdb_ft.NotFound, match="has no version 'v9'"):
            create(con, "bot2", "bot@v9", "SELECT p AS prompt, a AS completion FROM facts")
        with pytest.raises(duckdb_ft.AlreadyExists, match=r"has a version 'v1' already"):
            create(con, "bot", tiny_model_path, "SELECT p AS prompt, a AS completion FROM facts",
                   options={"version": "v1"})
        with pytest.raises(duckdb_ft.AlreadyExists, match=r"add a version to it with the option"):
            create(con, "bot", tiny_model_path, "SELECT p AS prompt, a AS completion FROM facts")
        with pytest.raises(duckdb_ft.InvalidArgument, match="invalid FINETUNE option version 3"):
            create(con, "bot", tiny_model_path, "SELECT p AS prompt, a AS completion FROM facts",
                   options={"version": 3})
        with pytest.raises(duckdb_ft.InvalidArgument, match="invalid model version"):
            create(con, "bot", tiny_model_path, "SELECT p AS prompt, a AS completion FROM facts",
                   options={"version": "no spaces"})
        with pytest.raises(duckdb_ft.InvalidArgument, match="cover all its versions"):
            con.execute("GRANT USAGE ON MODEL bot@v1 TO ROLE public")
        assert (catalog_counts(con), table(con, "SHOW VERSIONS IN MODEL bot")) == before
        assert "successfully" not in str(one(con, "SELECT 1"))  # the connection still works
    finally:
        con.close()


@pytest.mark.slow
def test_grants_on_the_model_cover_its_versions_and_only_the_owner_changes_them(versioned):
    path, _, _ = versioned
    admin = duckdb_ft.connect(path)
    admin.execute("CREATE ROLE IF NOT EXISTS analyst")
    admin.execute("GRANT ROLE analyst TO USER ann")
    admin.execute("GRANT USAGE ON SCHEMA main TO ROLE analyst")
    admin.execute("GRANT USAGE ON MODEL bot TO ROLE analyst")
    admin.execute("GRANT CREATE MODEL ON SCHEMA main TO ROLE analyst")
    admin.execute("GRANT SELECT ON TABLE facts TO ROLE analyst")
    admin.close()
    ann = duckdb_ft.connect(path, user="ann")
    try:
        ann.execute("USE ROLE analyst")
        assert "alpha" in answer(ann, "bot@v1", "Question 3")
        assert [v["name"] for v in table(ann, "SHOW VERSIONS IN MODEL bot")] == ["v1", "v2"]
        with pytest.raises(duckdb_ft.PermissionDenied):
            ann.execute("ALTER MODEL bot SET DEFAULT VERSION v1")
        with pytest.raises(duckdb_ft.PermissionDenied):
            ann.execute("DROP MODEL bot VERSION v1")
        with pytest.raises(duckdb_ft.PermissionDenied, match="'main.bot': adding a version needs OWNERSHIP"):
            create(ann, "bot", "bot", "SELECT p AS prompt, a AS completion FROM facts", options={"version": True})
        ann.execute("USE ROLE public")
        with pytest.raises(duckdb.Error, match="Insufficient privileges"):
            ann.execute("SELECT complete('bot@v1', 'x')").fetchall()
        with pytest.raises(duckdb.Error, match="Insufficient privileges"):  # no hint that v9 is unknown
            ann.execute("SELECT complete('bot@v9', 'x')").fetchall()
    finally:
        ann.close()


@pytest.mark.slow
def test_a_version_can_be_dropped_unless_it_is_the_default_and_the_next_one_counts_on(tmp_path, tiny_model_path):
    con = duckdb_ft.connect(str(tmp_path / "d.duckdb"))
    con.execute("CREATE TABLE t AS SELECT 'q' || i AS prompt, 'a' AS completion FROM range(8) t(i)")
    fast = {"max_epochs": 1, "batch_size": 4}
    jobs = [create(con, "m", tiny_model_path, "SELECT * FROM t", options={**fast, "version": True})
            for _ in range(2)]  # the first of a new name is v1; both may be pending at once
    jobs.append(create(con, "m", tiny_model_path, "SELECT * FROM t", options={**fast, "version": "canary"}))
    assert [wait(con, j) for j in jobs] == ["SUCCESS"] * 3
    assert rows(con, "SELECT model_version FROM duckdb_ft.jobs ORDER BY created_on") == [("v1",), ("v2",), ("canary",)]
    assert one(con, "SELECT version FROM duckdb_ft.models WHERE is_default") == "canary"
    con.execute("DROP MODEL m VERSION v2")
    assert [v["name"] for v in table(con, "SHOW VERSIONS IN MODEL m")] == ["v1", "canary"]
    job = create(con, "m", tiny_model_path, "SELECT * FROM t", options={**fast, "version": True})
    assert wait(con, job) == "SUCCESS"
    assert table(con, "DESCRIBE MODEL m")[0]["version"] == "v2"  # v<highest + 1>, as it is free
    con.execute("DROP MODEL m@v1")
    assert [v["name"] for v in table(con, "SHOW VERSIONS IN MODEL m")] == ["canary", "v2"]
    con.execute("DROP MODEL m")
    assert one(con, "SELECT count(*) FROM duckdb_ft.models") == 0
    con.close()


@pytest.mark.slow
def test_continuing_a_version_records_it_as_the_parent(versioned):
    path, j1, _ = versioned
    con = duckdb_ft.connect(path)
    try:
        job = create(con, "bot", "bot@v1", "SELECT p AS prompt, b AS completion FROM facts",
                     options={"max_epochs": 1, "batch_size": 4, "version": "v1_more"})
        assert wait(con, job) == "SUCCESS"
        job_row = describe(con, job)  # the job's DESCRIBE names the version it makes and the one it continues
        assert (job_row["model_version"], job_row["parent_model"]) == ("v1_more", "main.bot@v1")
        assert table(con, "FROM finetune('DESCRIBE', ?)".replace("?", f"'{job}'"))[0]["parent_model"] == "main.bot@v1"
        row = table(con, "DESCRIBE MODEL bot@v1_more")[0]
        assert row["parent_model"] == "main.bot@v1" and row["parent_job_id"] == j1
        assert row["is_default"] and json.loads(row["options"]).get("version") is None
        con.execute("ALTER MODEL bot SET DEFAULT VERSION v2")
        con.execute("DROP MODEL bot VERSION v1_more")
    finally:
        con.close()


def test_models_from_before_versions_become_version_v1_of_themselves(tmp_path):
    from duckdb_ft.catalog import migrations

    path = str(tmp_path / "old.duckdb")
    raw = duckdb.connect(path)
    raw.execute("CREATE SCHEMA duckdb_ft")
    raw.execute("CREATE TABLE duckdb_ft.migrations (name VARCHAR PRIMARY KEY, applied_on BIGINT)")
    cur = raw.cursor()
    upto = [m for m in migrations.MIGRATIONS if m.__name__ < "m010"]
    for m in upto:
        m(cur)
        cur.execute("INSERT INTO duckdb_ft.migrations VALUES (?, 0)", [m.__name__])
    cur.execute("INSERT INTO duckdb_ft.models (schema_name, name, base_model, lora_config, adapter, job_id, owner, "
                "created_on) VALUES ('main', 'old', 'tiny', '{}', 'x'::BLOB, 'ft_1', 'admin', 1)")
    raw.close()
    ro = duckdb_ft.connect(path, read_only=True)  # cannot be upgraded read-only: a clear error, not a bad column
    try:
        for call in (lambda: ro.execute("DESCRIBE MODEL old"), lambda: ro.execute("SHOW MODELS"),
                     lambda: ro.execute("SELECT complete('old', 'x')").fetchall(),
                     lambda: duckdb_ft.export_model(ro, "old", str(tmp_path / "out"))):
            with pytest.raises(duckdb_ft.InvalidArgument, match="open it read-write once"):
                call()
        assert not (tmp_path / "out").exists()
    finally:
        ro.close()
    con = duckdb_ft.connect(path)
    try:
        assert rows(con, "SELECT name, version, is_default, job_id FROM duckdb_ft.models") == \
            [("old", "v1", True, "ft_1")]
        with pytest.raises(duckdb.ConstraintException):  # the key is now (schema, name, version)
            con.execute("INSERT INTO duckdb_ft.models SELECT * FROM duckdb_ft.models")
    finally:
        con.close()


@pytest.mark.slow
def test_export_and_evaluate_name_a_version(versioned, tmp_path):
    path, j1, j2 = versioned
    con = duckdb_ft.connect(path)
    try:
        folder = duckdb_ft.export_model(con, "bot@v1", str(tmp_path / "v1"))
        info = json.loads((tmp_path / "v1" / "duckdb_ft.json").read_text())
        assert (info["version"], info["job_id"]) == ("v1", j1) and folder.endswith("v1")
        with pytest.raises(duckdb_ft.NotFound, match="has no version 'v7'"):
            duckdb_ft.export_model(con, "bot@v7", str(tmp_path / "v7"))
        assert not (tmp_path / "v7").exists()
        summary = json.loads(one(con, "SELECT finetune('EVALUATE', '[\"bot@v1\", \"bot\"]', "
                                      "'SELECT p AS prompt, a AS completion FROM facts LIMIT 3', "
                                      "'{\"metrics\": [\"token_f1\"], \"max_tokens\": 4}')"))
        scores = {name: m["token_f1"] for name, m in summary["models"].items()}
        assert scores["bot@v1"] > scores["bot"]  # v1 answers 'alpha alpha'; the default v2 'beta beta'
    finally:
        con.close()
