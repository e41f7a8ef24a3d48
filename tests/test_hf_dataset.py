"""Hugging Face datasets (issue 37, item 5): a job's training snapshot, or a query's rows, as a ``datasets.Dataset``
over the same Arrow buffers, whose rows and recomputed hash are the model lineage's; saved with ``save_to_disk``
(``export --format dataset``); and a saved folder read back as a table that a FINETUNE job trains on, with the same
snapshot hash as the job the rows came from."""

from __future__ import annotations

import json

import pytest

import duckdb_ft
from conftest import rows, user_connection


def _lineage(con, job):
    return con.execute("SELECT snapshot_rows, snapshot_hash FROM duckdb_ft.models WHERE job_id = ?",
                       [job]).fetchall()[0]


def test_from_arrow_wraps_the_same_buffers():
    import pyarrow as pa

    from duckdb_ft.ml import hf_dataset

    table = pa.table({"prompt": ["a", "bc"], "completion": ["x", "yz"]})
    ds = hf_dataset.from_arrow(table, {"query": "q"})
    ours = [b.address for b in ds.data.table.column("prompt").chunks[0].buffers() if b is not None]
    theirs = [b.address for b in table.column("prompt").chunks[0].buffers() if b is not None]
    assert ours == theirs  # no copy
    assert ds[1] == {"prompt": "bc", "completion": "yz"}
    assert json.loads(ds.info.description) == {"duckdb_ft": {"query": "q"}}


def test_a_snapshot_dataset_has_the_jobs_rows_and_lineage_hash(apple_copy):
    db, job, _ = apple_copy
    con = duckdb_ft.connect(db)
    try:
        ds = duckdb_ft.to_dataset(con, job)
        expected = rows(con, "SELECT split, prompt, completion FROM duckdb_ft.job_rows WHERE job_id = ? "
                             "ORDER BY split, idx", job)
        assert ds.column_names == ["split", "prompt", "completion"]
        assert [(r["split"], r["prompt"], r["completion"]) for r in ds] == expected and len(expected) >= 16
        recorded = _lineage(con, job)
        assert duckdb_ft.dataset_digest(ds) == recorded
        info = json.loads(ds.info.description)["duckdb_ft"]
        assert (info["snapshot_rows"], info["snapshot_hash"]) == recorded and info["model"] == "main.exported"
        assert duckdb_ft.dataset_digest(ds.select(range(len(ds) - 1))) != recorded  # a row less: another hash

        q = duckdb_ft.to_dataset(con, "SELECT p AS prompt, c AS completion FROM t WHERE p LIKE '%1%' ORDER BY p")
        assert [(r["prompt"], r["completion"]) for r in q] == rows(
            con, "SELECT p, c FROM t WHERE p LIKE '%1%' ORDER BY p")
        with pytest.raises(duckdb_ft.InvalidArgument, match="dataset query must be a SELECT statement, got DROP"):
            duckdb_ft.to_dataset(con, "DROP TABLE t")
        assert rows(con, "SELECT count(*) FROM t") == [(16,)]
        with pytest.raises(duckdb_ft.NotFound, match="does not exist"):
            duckdb_ft.to_dataset(con, "ft_00000000-0000-0000-0000-000000000000")

        con.execute("CREATE ROLE analyst")
        con.execute("GRANT ROLE analyst TO USER ann")
        user = user_connection(con, "ann")
        try:
            messages = []
            for source in (job, "ft_00000000-0000-0000-0000-000000000000"):
                with pytest.raises(duckdb_ft.PermissionDenied, match="does not exist or reading its rows") as e:
                    duckdb_ft.to_dataset(user, source)
                messages.append(str(e.value).replace(source, "J"))
            assert messages[0] == messages[1]  # one error: a job not owned reads as one that does not exist
            with pytest.raises(duckdb_ft.PermissionDenied):  # a query runs under the user's privileges
                duckdb_ft.to_dataset(user, "SELECT p AS prompt FROM t")
            with pytest.raises(duckdb_ft.PermissionDenied, match="administrator"):
                duckdb_ft.read_dataset(user, "/tmp", "x")
        finally:
            user.close()
    finally:
        con.close()


@pytest.mark.slow
def test_a_saved_dataset_folder_trains_a_job_with_the_same_snapshot_hash(apple_copy, tmp_path, tiny_model_path,
                                                                          capsys):
    import datasets

    from duckdb_ft import cli

    db, job, _ = apple_copy
    folder = tmp_path / "snapshot"
    assert cli.main(["export", db, job, str(folder), "--format", "dataset"]) == 0
    assert f"to {folder}" in capsys.readouterr().out
    saved = datasets.load_from_disk(str(folder))
    lineage = json.loads((folder / "duckdb_ft.json").read_text())
    assert duckdb_ft.dataset_digest(saved) == (lineage["snapshot_rows"], lineage["snapshot_hash"])

    con = duckdb_ft.connect()
    try:
        assert duckdb_ft.read_dataset(con, str(folder), "learned") == lineage["snapshot_rows"]
        splits = dict(rows(con, "SELECT split, count(*) FROM learned GROUP BY split"))
        validation = "SELECT prompt, completion FROM learned WHERE split = 'validation'" if "validation" in splits \
            else None
        new_job = con.execute("SELECT finetune('CREATE', 'again', ?, 'SELECT prompt, completion FROM learned WHERE "
                              "split = ''train''', ?, '{\"max_epochs\": 1}')",
                              [tiny_model_path, validation]).fetchall()[0][0]
        assert duckdb_ft.wait(con, new_job, 300) == "SUCCESS"
        assert _lineage(con, new_job) == (lineage["snapshot_rows"], lineage["snapshot_hash"])

        ds = datasets.Dataset.from_dict({"prompt": ["a", "b", "c"], "completion": ["1", "2", "3"]})
        ds.train_test_split(test_size=1, shuffle=False).save_to_disk(str(tmp_path / "dict"))
        assert duckdb_ft.read_dataset(con, str(tmp_path / "dict"), "parts") == 3
        assert rows(con, "SELECT split, prompt FROM parts ORDER BY prompt") == [
            ("train", "a"), ("train", "b"), ("test", "c")]
        with pytest.raises(duckdb_ft.InvalidArgument, match="not a folder saved by datasets"):
            duckdb_ft.read_dataset(con, str(tmp_path), "nothing")
    finally:
        con.close()
    assert cli.main(["export", db, job, str(folder), "--format", "dataset"]) == 1  # not empty: refused
    assert "exists already and is not an empty folder" in capsys.readouterr().err


def test_a_dataset_pushes_to_a_hub_dataset_repository_behind_the_model_push_checks(apple_copy, tmp_path,
                                                                                    monkeypatch):
    import glob
    import os
    import tempfile
    from pathlib import Path

    def scratch():
        return set(glob.glob(os.path.join(tempfile.gettempdir(), "duckdb-ft-push-*")))

    db, job, _ = apple_copy
    con = duckdb_ft.connect(db)
    try:
        before = scratch()
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(duckdb_ft.RemoteError, match="offline.*Nothing was written"):
            duckdb_ft.export_dataset(con, job, str(tmp_path / "data"), push_to_hub="someone/rows")
        assert list(tmp_path.iterdir()) == [] and scratch() == before

        uploaded = {}

        class FakeApi:  # huggingface_hub.HfApi's two calls, recorded
            def __init__(self, endpoint=None, token=None):
                self.token = token

            def create_repo(self, repo_id, private, exist_ok, repo_type):
                uploaded.update(repo=repo_id, private=private, create_type=repo_type)
                return f"https://huggingface.co/datasets/{repo_id}"

            def upload_folder(self, repo_id, folder_path, commit_message, repo_type):
                uploaded.update(files=sorted(p.name for p in Path(folder_path).iterdir()), type=repo_type,
                                message=commit_message)

        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_TOKEN", "hf_token_from_env")
        monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
        url = duckdb_ft.export_dataset(con, job, None, push_to_hub="someone/rows")
    finally:
        con.close()
    assert url == "https://huggingface.co/datasets/someone/rows"
    assert uploaded["create_type"] == uploaded["type"] == "dataset" and uploaded["private"] is True
    assert {"state.json", "dataset_info.json", "duckdb_ft.json"} <= set(uploaded["files"])
    assert job in uploaded["message"] and scratch() == before
