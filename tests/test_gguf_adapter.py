"""GGUF LoRA adapters and Ollama Modelfiles (issue 37, items 2 and 4).

``--format gguf-lora`` writes the adapter alone in llama.cpp's adapter layout; what llama.cpp computes from it over
the base model's GGUF (``base + lora_b @ lora_a * alpha / rank``, per tensor) must be the merged GGUF export's
tensors. Every GGUF export has a Modelfile beside it; its TEMPLATE, rendered by a renderer of the Go-template
subset it uses (written here, independent of the package), must give the chat template's own text."""

from __future__ import annotations

import json
import re

import pytest

import duckdb_ft

# ------------------------------------------------------------------------------------- a Go-template renderer

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+)')


def _parse(template: str) -> list:
    """Nodes: ("text", s), ("out", expr), ("if", [(cond, body), ...], else_body), ("range", var, list_expr, body)."""
    pos, root, stack = 0, [], []
    current = root
    for m in _ACTION.finditer(template):
        if m.start() > pos:
            current.append(("text", template[pos:m.start()]))
        pos = m.end()
        action = m.group(1).strip()
        assert not action.startswith("-") and not action.endswith("-"), "the export emits no trimming"
        if action.startswith("range "):
            head, _, expr = action[6:].partition(":=")
            node = ("range", head.split(",")[0].strip(), expr.strip(), [])
            current.append(node)
            stack.append((node, current))
            current = node[3]
        elif action.startswith("if "):
            node = ("if", [(action[3:], [])], [])
            current.append(node)
            stack.append((node, current))
            current = node[1][0][1]
        elif action.startswith("else if "):
            node = stack[-1][0]
            node[1].append((action[8:], []))
            current = node[1][-1][1]
        elif action == "else":
            current = stack[-1][0][2]
        elif action == "end":
            current = stack.pop()[1]
        else:
            current.append(("out", action))
    assert not stack, "unclosed action"
    if pos < len(template):
        current.append(("text", template[pos:]))
    return root


def _eval(expr: str, dot: dict, env: dict):
    tokens = _TOKEN.findall(expr)

    def atom(i):
        t = tokens[i]
        if t == "(":
            value, i = call(i + 1)
            assert tokens[i] == ")"
            return value, i + 1
        if t.startswith('"'):
            return json.loads(t), i + 1
        if t.startswith("$"):
            return env[t], i + 1
        if t.startswith("."):
            return dot[t[1:]], i + 1
        return int(t), i + 1

    def call(i):
        name = tokens[i]
        funcs = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "and": lambda *a: all(a)}
        if name not in funcs:
            return atom(i)
        args, i = [], i + 1
        while i < len(tokens) and tokens[i] != ")":
            value, i = atom(i)
            args.append(value)
        return funcs[name](*args), i

    value, i = call(0)
    assert i == len(tokens), expr
    return value


def _run(nodes: list, dot: dict, env: dict) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_eval(node[1], dot, env)))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _eval(cond, dot, env):
                    out.append(_run(body, dot, env))
                    break
            else:
                out.append(_run(node[2], dot, env))
        else:
            for i, item in enumerate(_eval(node[2], dot, env)):
                out.append(_run(node[3], item, {**env, node[1]: i}))
    return "".join(out)


def render_go(template: str, messages: list[dict]) -> str:
    """``template`` rendered as Ollama renders a chat: ``.Messages`` with ``.Role`` and ``.Content``."""
    return _run(_parse(template), {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}, {})


def _template(text: str) -> str | None:
    m = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    return m.group(1) if m else None


CONVERSATIONS = [
    [{"role": "user", "content": "Say the word 3"}],
    [{"role": "system", "content": "You write DuckDB SQL."}, {"role": "user", "content": "Count rows of t."}],
    [{"role": "user", "content": "Hi\nthere"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Tell me about {{ braces }} and \"quotes\"."}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
     {"role": "user", "content": "z"}, {"role": "assistant", "content": "w"}, {"role": "user", "content": "v"}],
]

#: Chat templates of other shapes: Llama 3's (a BOS before everything; without its ``| trim``, which no Go template
#: can copy), a literal "{{" in the text, and one that is not text around each message (a system message dropped),
#: which gets no TEMPLATE; nor does a template that trims the content.
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
          "m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
BRACES = ("{% for m in messages %}{{ '{{' + m['role'] + '}}: ' + m['content'] + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '{{assistant}}: ' }}{% endif %}")
FOLDED = ("{% for m in messages %}{% if m['role'] == 'system' %}{% set sys = m['content'] %}{% elif m['role'] == "
          "'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + '</s>' }}{% endif %}"
          "{% endfor %}")


def test_modelfile_template_renders_as_the_chat_template(tiny):
    import copy

    from duckdb_ft.ml import modelfile

    tokenizer = tiny[1]
    text = modelfile.modelfile("./model.gguf", tokenizer, [tokenizer.eos_token_id, tokenizer.pad_token_id], "m")
    assert text.splitlines()[1:2] == ["FROM ./model.gguf"] and "ADAPTER" not in text
    assert re.findall(r"^PARAMETER stop (.*)$", text, re.M) == ['"<|im_end|>"']  # eos and pad: one token
    template = _template(text)
    assert template is not None and "You are a helpful AI assistant named SmolLM" in template  # SmolLM2's default
    for conversation in CONVERSATIONS:
        assert render_go(template, conversation) == tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True)

    for chat_template in (LLAMA3, BRACES):
        other = copy.copy(tokenizer)
        other.chat_template = chat_template
        template = _template(modelfile.modelfile("./m.gguf", other, [2], "m"))
        assert template is not None, chat_template
        for conversation in CONVERSATIONS[:3]:
            expected = other.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
            assert render_go(template, conversation) == expected, chat_template
    for chat_template in (FOLDED, LLAMA3.replace("m['content'] +", "m['content'] | trim +")):
        other = copy.copy(tokenizer)
        other.chat_template = chat_template
        text = modelfile.modelfile("./m.gguf", other, [2], "m")
        assert _template(text) is None and "# No TEMPLATE" in text and "FROM ./m.gguf" in text


@pytest.mark.slow
def test_gguf_lora_over_the_base_gguf_is_the_merged_gguf_and_each_has_a_modelfile(apple_copy, tmp_path,
                                                                                  tiny_model_path):
    import gguf
    import numpy as np

    db = apple_copy[0]
    con = duckdb_ft.connect(db)
    try:
        adapter_dir = duckdb_ft.export_model(con, "exported", str(tmp_path / "adapter"), format="gguf-lora")
        merged_dir = duckdb_ft.export_model(con, "exported", str(tmp_path / "merged"), format="gguf")
        base = duckdb_ft.export_model(con, tiny_model_path, str(tmp_path / "adapter" / "base.gguf"), format="gguf")
        single = duckdb_ft.export_model(con, "exported", str(tmp_path / "bot.gguf"), format="gguf-lora",
                                        dtype="f16")
        with pytest.raises(duckdb_ft.InvalidArgument, match="is a base model, which has no adapter"):
            duckdb_ft.export_model(con, tiny_model_path, str(tmp_path / "x"), format="gguf-lora")
        lora_r, lora_alpha = con.execute("SELECT lora_config->>'r', lora_config->>'lora_alpha' "
                                         "FROM duckdb_ft.models").fetchall()[0]
    finally:
        con.close()

    reader = gguf.GGUFReader(f"{adapter_dir}/adapter.gguf")
    fields = reader.fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["general.type"].contents() == "adapter" and fields["adapter.type"].contents() == "lora"
    r, alpha = int(lora_r), float(lora_alpha)
    assert fields["adapter.lora.alpha"].contents() == pytest.approx(alpha)
    lora = {t.name: t for t in reader.tensors}
    base_t = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(base).tensors}
    merged_t = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(f"{merged_dir}/model.gguf").tensors}
    assert set(base_t) == set(merged_t)
    adapted = {n.removesuffix(".lora_a") for n in lora if n.endswith(".lora_a")}
    assert adapted == {n.removesuffix(".lora_b") for n in lora if n.endswith(".lora_b")}
    assert len(adapted) == 2 * 7 and "blk.0.attn_q.weight" in adapted and "blk.1.ffn_down.weight" in adapted
    for name in base_t:
        if name not in adapted:
            np.testing.assert_array_equal(merged_t[name], base_t[name])
            continue
        a, b = lora[name + ".lora_a"], lora[name + ".lora_b"]
        out_f, in_f = base_t[name].shape
        # ggml's order (ne): lora_a is (in, rank), lora_b (rank, out): what llama.cpp checks against the weight
        assert [int(x) for x in a.shape] == [in_f, r] and [int(x) for x in b.shape] == [r, out_f]
        delta = np.asarray(b.data) @ np.asarray(a.data) * (alpha / r)
        np.testing.assert_allclose(base_t[name] + delta, merged_t[name], rtol=0, atol=2e-6, err_msg=name)
    assert np.abs(merged_t["blk.0.attn_q.weight"] - base_t["blk.0.attn_q.weight"]).max() > 1e-3  # it learned

    half = gguf.GGUFReader(single)
    assert {t.tensor_type.name for t in half.tensors} == {"F16"} and len(half.tensors) == len(lora)
    modelfile = (tmp_path / "adapter" / "Modelfile").read_text()
    assert "\nFROM ./base.gguf\nADAPTER ./adapter.gguf\n" in modelfile
    assert f"duckdb-ft export DATABASE {tiny_model_path} base.gguf --format gguf" in modelfile
    assert "\nFROM ./model.gguf\n" in (tmp_path / "merged" / "Modelfile").read_text()
    beside = (tmp_path / "bot.Modelfile").read_text()
    assert "\nADAPTER ./bot.gguf\n" in beside and _template(beside) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "bot.Modelfile", "bot.gguf", "merged"]
    info = json.loads((tmp_path / "adapter" / "duckdb_ft.json").read_text())
    assert info["format"] == "gguf-lora" and info["model"] == "main.exported"
