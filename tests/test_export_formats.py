"""Export formats (issue 16): ``merged`` (a plain Hugging Face folder that loads without peft and answers as
COMPLETE does, token for token) and ``gguf`` (one GGUF file whose tensors, shapes and metadata read back with
``gguf.GGUFReader``, and which transformers' ``gguf_file=`` loads and answers as COMPLETE does); bad input
(unknown format or dtype, a folder that exists and is not empty, no OWNERSHIP) changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import duckdb_ft
from conftest import APPLE_PROMPTS as PROMPTS


#: Run in a fresh interpreter with peft made unimportable: transformers alone loads both exports.
LOAD = r"""
import json, sys
sys.modules["peft"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, gguf_dir, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {}
for kind, kwargs in (("merged", {}), ("gguf", {"gguf_file": "model.gguf"})):
    path = folder if kind == "merged" else gguf_dir
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()
    stop = model.generation_config.eos_token_id
    answers = []
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=6, do_sample=False,
                                 **({} if kind == "merged" else {"eos_token_id": json.loads(sys.argv[4])}))
        new = gen[0, ids["input_ids"].shape[1]:].tolist()
        answers.append({"tokens": new, "text": tok.decode(new, skip_special_tokens=True).strip()})
    out[kind] = answers
print(json.dumps(out))
"""


@pytest.fixture
def exported(apple_copy):
    """A copy of the ``apple`` database (model 'exported') and COMPLETE's answers to ``PROMPTS``."""
    db, _, answers = apple_copy
    return db, answers


@pytest.mark.slow
def test_merged_and_gguf_load_with_transformers_alone_and_answer_as_complete(exported, tmp_path):
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM

    from duckdb_ft.ml import gguf_file

    db, answers = exported
    gguf_dir = tmp_path / "gguf"  # through the command line
    run = subprocess.run([sys.executable, "-m", "duckdb_ft", "export", db, "exported", str(gguf_dir),
                          "--format", "gguf"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (gguf_dir / "model.gguf").is_file()
    merged = tmp_path / "merged"
    con = duckdb_ft.connect(db)
    assert duckdb_ft.export_model(con, "exported", str(merged), format="merged") == str(merged)
    con.close()
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "duckdb_ft.json"):
        assert (merged / f).is_file(), f
    assert "adapter_config.json" not in {p.name for p in merged.iterdir()}
    assert json.loads((merged / "duckdb_ft.json").read_text())["format"] == "merged"

    # The GGUF file reads back: metadata, and every tensor of the merged weights by llama.cpp's name and layout.
    reader = gguf.GGUFReader(str(gguf_dir / "model.gguf"))
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    plain = AutoModelForCausalLM.from_pretrained(merged)
    cfg = plain.config
    assert fields["llama.block_count"].contents() == cfg.num_hidden_layers
    assert fields["llama.embedding_length"].contents() == cfg.hidden_size
    assert fields["llama.attention.head_count_kv"].contents() == cfg.num_key_value_heads
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"  # SmolLM2's tokenizer, as llama.cpp names it
    assert len(fields["tokenizer.ggml.tokens"].data) == cfg.vocab_size
    assert "im_start" in fields["tokenizer.chat_template"].contents()
    tensors = {t.name: t for t in reader.tensors}
    state = plain.state_dict()
    assert len(tensors) == len([k for k in state if k != "lm_head.weight"])  # tied: no output.weight
    emb = tensors["token_embd.weight"]
    assert tuple(int(x) for x in emb.shape[::-1]) == tuple(state["model.embed_tokens.weight"].shape)
    np.testing.assert_array_equal(np.asarray(emb.data), state["model.embed_tokens.weight"].numpy())
    q = state["model.layers.1.self_attn.q_proj.weight"].numpy()
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.attn_q.weight"].data),
                                  gguf_file.permute_for_gguf(q, cfg.num_attention_heads))
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.ffn_down.weight"].data),
                                  state["model.layers.0.mlp.down_proj.weight"].numpy())

    # A fresh interpreter without peft: both exports give COMPLETE's greedy answers, token for token.
    stops = plain.generation_config.eos_token_id
    run = subprocess.run([sys.executable, "-c", LOAD, str(merged), str(gguf_dir), json.dumps(PROMPTS),
                          json.dumps(stops)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    for kind in ("merged", "gguf"):
        for ours, theirs in zip(answers, loaded[kind]):
            n = ours["usage"]["completion_tokens"]
            assert theirs["text"] == ours["choices"][0]["messages"], (kind, theirs, ours)
            assert len([t for t in theirs["tokens"] if t not in stops]) == n, (kind, theirs, ours)
    assert "apple" in loaded["merged"][0]["text"]


@pytest.mark.slow
def test_f16_gguf_is_half_precision(exported, tmp_path):
    import gguf

    con = duckdb_ft.connect(exported[0])
    path = duckdb_ft.export_model(con, "exported", str(tmp_path / "bot.gguf"), format="gguf", dtype="f16")
    con.close()
    assert path.endswith("bot.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bot.Modelfile", "bot.gguf"]  # its Modelfile beside it
    reader = gguf.GGUFReader(path)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["token_embd.weight"] == "F16" and kinds["blk.0.attn_norm.weight"] == "F32"
    assert reader.fields["general.file_type"].contents() == 1


@pytest.mark.slow
def test_an_export_that_fails_midway_leaves_nothing(exported, tmp_path, monkeypatch):
    from duckdb_ft.ml import gguf_file

    def half_written(model, tokenizer, path, dtype, name):
        path.write_bytes(b"GGUF half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_file, "write_gguf", half_written)
    con = duckdb_ft.connect(exported[0])
    try:
        with pytest.raises(OSError, match="No space left"):
            duckdb_ft.export_model(con, "exported", str(tmp_path / "out"), format="gguf")
    finally:
        con.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bad_export_requests_are_clear_errors_and_leave_nothing(exported, tmp_path):
    db = exported[0]
    run = subprocess.run([sys.executable, "-m", "duckdb_ft", "export", db, "exported", str(tmp_path / "z"),
                          "--format", "onnx"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.startswith("Error: unknown export format") and "Traceback" not in run.stderr
    assert run.stderr.count("Error") == 1, run.stderr  # one prefix, not "Error: Error: ..."
    con = duckdb_ft.connect(db)
    with pytest.raises(duckdb_ft.InvalidArgument, match="unknown export format 'onnx'.*adapter, merged, gguf"):
        duckdb_ft.export_model(con, "exported", str(tmp_path / "x"), format="onnx")
    with pytest.raises(duckdb_ft.InvalidArgument, match="unknown export dtype 'int4'"):
        duckdb_ft.export_model(con, "exported", str(tmp_path / "x"), format="gguf", dtype="int4")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(duckdb_ft.AlreadyExists, match="not an empty folder"):
        duckdb_ft.export_model(con, "exported", str(full), format="merged")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    with pytest.raises(duckdb_ft.NotFound, match="model 'main.no_such_model' does not exist: SHOW MODELS"):
        duckdb_ft.export_model(con, "no_such_model", str(tmp_path / "y"), format="merged")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(duckdb_ft.InvalidArgument, match="cannot write in .*a_file.*choose a writable folder"):
        duckdb_ft.export_model(con, "exported", str(tmp_path / "a_file" / "inside"), format="merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "full"]  # no temporary folder left behind

    con.execute("CREATE ROLE analyst")
    con.execute("GRANT USAGE ON MODEL exported TO ROLE analyst")
    con.execute("USE ROLE analyst")
    try:
        with pytest.raises(duckdb_ft.PermissionDenied, match="OWNERSHIP"):
            duckdb_ft.export_model(con, "exported", str(tmp_path / "w"), format="gguf")
    finally:
        con.execute("USE ROLE admin")
        con.close()
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_base_model_exports_as_gguf_and_merged_where_the_session_may_name_it(con, tiny_model_path, tmp_path):
    """Issue 37: the base GGUF an adapter needs beside it. A registered base model exports for a role with USAGE on
    it (its ``duckdb_ft.json`` names it as registered, never by its folder); without USAGE the error is the one of a
    model that does not exist; a base model has no adapter format."""
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM

    from conftest import user_connection

    path = duckdb_ft.export_model(con, tiny_model_path, str(tmp_path / "base.gguf"), format="gguf")
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.name"].contents() == tiny_model_path
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    np.testing.assert_array_equal(tensors["token_embd.weight"], base["model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(tensors["blk.1.ffn_up.weight"], base["model.layers.1.mlp.up_proj.weight"].numpy())
    with pytest.raises(duckdb_ft.InvalidArgument, match="is a base model, which has no adapter.*merged or gguf"):
        duckdb_ft.export_model(con, tiny_model_path, str(tmp_path / "a"), format="adapter")

    con.execute(f"CREATE BASE MODEL corp_tiny FROM '{tiny_model_path}'")
    con.execute("CREATE ROLE analyst")
    con.execute("GRANT ROLE analyst TO USER ann")
    user = user_connection(con, "ann")
    try:
        with pytest.raises(duckdb_ft.PermissionDenied, match="does not exist or OWNERSHIP is required") as e:
            duckdb_ft.export_model(user, "corp_tiny", str(tmp_path / "no"), format="merged")
        with pytest.raises(duckdb_ft.PermissionDenied) as missing:
            duckdb_ft.export_model(user, "no_such_model", str(tmp_path / "no"), format="merged")
        assert str(e.value).replace("corp_tiny", "no_such_model") == str(missing.value)  # one error for both
        con.execute("GRANT USAGE ON BASE MODEL corp_tiny TO ROLE analyst")
        out = duckdb_ft.export_model(user, "corp_tiny", str(tmp_path / "merged"), format="merged")
    finally:
        user.close()
    info = json.loads((tmp_path / "merged" / "duckdb_ft.json").read_text())
    assert info == {"model": "corp_tiny", "format": "merged", "base_model": "corp_tiny", "dtype": "f32"}
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(np.array_equal(merged[k].numpy(), base[k].numpy()) for k in base)
    assert not (tmp_path / "no").exists()
