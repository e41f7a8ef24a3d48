"""Export with push_to_hub (issue 16): the exported folder goes to the Hugging Face Hub through huggingface_hub's
upload, with the token from the environment; offline, unreachable or without a token it is a clear error, raised
before anything is written, that says to export a folder instead."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import duckdb_ft
from conftest import create, wait


@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny_model_path):
    path = str(tmp_path_factory.mktemp("push") / "push.duckdb")
    con = duckdb_ft.connect(path)
    con.execute("CREATE TABLE t AS SELECT 'q' || i AS prompt, 'a' AS completion FROM range(8) t(i)")
    assert wait(con, create(con, "m", tiny_model_path, "SELECT * FROM t",
                            options={"max_epochs": 1, "batch_size": 4})) == "SUCCESS"
    con.close()
    return path


def scratch_folders():
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "duckdb-ft-push-*")))


def test_offline_push_is_a_clear_error_that_writes_nothing(db, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = scratch_folders()
    con = duckdb_ft.connect(db)
    try:
        with pytest.raises(duckdb_ft.RemoteError, match=r"offline .*export to a folder instead.*Nothing was written"):
            duckdb_ft.export_model(con, "m", None, push_to_hub="someone/m")
        with pytest.raises(duckdb_ft.RemoteError, match="offline"):
            duckdb_ft.export_model(con, "m", str(tmp_path / "out"), format="merged", push_to_hub="someone/m")
        with pytest.raises(duckdb_ft.InvalidArgument, match="repository id 'user/name'"):
            duckdb_ft.export_model(con, "m", None, push_to_hub="no-slash")
        with pytest.raises(duckdb_ft.InvalidArgument, match="needs a folder to write"):
            duckdb_ft.export_model(con, "m", None)
    finally:
        con.close()
    assert list(tmp_path.iterdir()) == [] and scratch_folders() == before
    run = subprocess.run([sys.executable, "-m", "duckdb_ft", "export", db, "m", "--push-to-hub", "someone/m"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 1 and "export to a folder instead" in run.stderr and "Traceback" not in run.stderr


def test_an_unreachable_hub_or_no_token_is_a_clear_error_that_writes_nothing(db, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    con = duckdb_ft.connect(db)
    try:
        with pytest.raises(duckdb_ft.RemoteError, match="without a token: set HF_TOKEN"):
            duckdb_ft.export_model(con, "m", str(tmp_path / "out"), push_to_hub="someone/m")
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
        with pytest.raises(duckdb_ft.RemoteError, match=r"cannot reach the Hugging Face Hub to create someone/m "
                                                        r"\(.*\): export to a folder instead"):
            duckdb_ft.export_model(con, "m", str(tmp_path / "out"), push_to_hub="someone/m")
    finally:
        con.close()
    assert list(tmp_path.iterdir()) == []


def test_push_uploads_the_whole_exported_folder_and_removes_its_scratch_copy(db, tmp_path, monkeypatch):
    uploaded = {}

    class FakeApi:  # huggingface_hub.HfApi's two calls, recorded
        def __init__(self, endpoint=None, token=None):
            self.token = token

        def create_repo(self, repo_id, private, exist_ok, repo_type):
            uploaded.update(repo=repo_id, private=private, token=self.token)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message, repo_type):
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            uploaded["message"] = commit_message

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_token_from_env")
    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    before = scratch_folders()
    con = duckdb_ft.connect(db)
    try:
        url = duckdb_ft.export_model(con, "m@v1", None, push_to_hub="someone/m")
    finally:
        con.close()
    assert url == "https://huggingface.co/someone/m"
    assert uploaded["repo"] == "someone/m" and uploaded["private"] is True
    assert uploaded["token"] == "hf_token_from_env"
    assert {"adapter_model.safetensors", "adapter_config.json", "duckdb_ft.json"} <= set(uploaded["files"])
    assert "main.m@v1" in uploaded["message"]
    assert scratch_folders() == before
