"""The closing policy of constrained decoding (``duckdb_ft/ml/closing.py``), driven with crafted logits through
each path's own chooser (``greedy_pick``: COMPLETE's continuous batch; ``running.pick``: the server's sampled rows;
``Processor``: ``generate``) and the real SmolLM2 tokenizer of the tiny test model:

- a row closes only when what is left to close *from where it is* would no longer fit its budget, so a document
  the model spells that fits ``max_tokens`` comes out whole (it once started closing a whole shortest document
  early, cutting the last values);
- every row ends in a document that validates within ``max_tokens``, whatever the logits prefer, even a model
  that keeps a string open forever or opens a large optional object late (a row once ended unclosed).
"""

from __future__ import annotations

import json

import jsonschema
import pytest

#: benchmarks/structured_output.py's nested schema.
NESTED = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
    "role": {"type": "string", "enum": ["customer", "supplier", "employee"]},
    "interests": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    "contact": {"type": "object", "properties": {"email": {"type": "string"}, "vip": {"type": "boolean"}},
                "required": ["email", "vip"]}},
    "required": ["name", "age", "city", "role", "contact"]}
ANSWER = {"name": "Dmitri Ivanov", "age": 42, "city": "Cairo", "role": "employee", "interests": ["chess"],
          "contact": {"email": "dmitri@example.com", "vip": False}}
#: An optional object of six required strings before the one required property: the shortest document is short,
#: closing from inside the optional object is long.
LATE = {"type": "object", "properties": {
    "extra": {"type": "object", "properties": {k: {"type": "string"} for k in "abcdef"}, "required": list("abcdef")},
    "note": {"type": "string"}}, "required": ["note"]}
PATTERNED = {"type": "object", "properties": {
    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}, "tags": {"type": "array", "items": {"type": "string"}},
    "n": {"type": "number"}, "ok": {"type": "boolean"}}, "required": ["zip", "tags", "n", "ok"]}
LIST = {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
        "minItems": 1}


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    from duckdb_ft.ml import models

    return models.load(tiny_model_path)


def _grammar(loaded, schema):
    from duckdb_ft.ml import complete, constrain

    return constrain.compile(loaded, json.dumps({"type": "json", "schema": schema}),
                             complete.stop_ids(loaded.model, loaded.tokenizer))


class Scripted:
    """Logits of a model that wants to write ``text`` (its next token +20), likes ``fond`` (+10) whenever it can, and
    is otherwise noise; one row each, tokens counted per row."""

    def __init__(self, loaded, texts, fond="x", seed=0):
        import torch

        self.tok = loaded.tokenizer
        self.vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
        self.targets = [self.tok.encode(t, add_special_tokens=False) + [self.tok.eos_token_id] for t in texts]
        self.fond = self.tok.encode(fond, add_special_tokens=False)[0]
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, news):
        import torch

        logits = torch.randn(len(news), self.vocab, generator=self.gen)
        for k, new in enumerate(news):
            logits[k, self.fond] += 10
            if len(new) < len(self.targets[k]):
                logits[k, self.targets[k][len(new)]] += 20
        return logits


def _texts(loaded, news):
    from duckdb_ft.ml import complete, constrain

    stop = set(complete.stop_ids(loaded.model, loaded.tokenizer))
    out = []
    for new in news:
        n = next((i for i, t in enumerate(new) if t in stop), len(new))
        out.append(constrain.as_json(loaded.tokenizer.decode(new[:n], skip_special_tokens=True).strip()))
    return out


def run_greedy(loaded, grammar, model, max_new, rows):
    """Greedy rows as ``decode.greedy`` chooses them (``constrain.greedy_pick``), each to its end token or budget."""
    from duckdb_ft.ml import complete, constrain

    stop = set(complete.stop_ids(loaded.model, loaded.tokenizer))
    states = [constrain.start(grammar) for _ in range(rows)]
    news: list[list[int]] = [[] for _ in range(rows)]
    while any(len(n) < max_new and not (n and n[-1] in stop) for n in news):
        live = [k for k, n in enumerate(news) if len(n) < max_new and not (n and n[-1] in stop)]
        logits = model([news[k] for k in live])
        tokens = constrain.greedy_pick(logits, [states[k] for k in live], [max_new - len(news[k]) for k in live])
        for k, t in zip(live, tokens.tolist()):
            news[k].append(t)
    return news, states


def run_sampled(loaded, grammar, model, max_new, rows):
    """Sampled rows as the server's running batch chooses them (``running.pick``, temperature 0.9)."""
    import torch

    from duckdb_ft.ml import complete, constrain, running

    stop = set(complete.stop_ids(loaded.model, loaded.tokenizer))
    batch = [running.Row(ids=[1], max_new=max_new, constraint=constrain.start(grammar), temperature=0.9,
                         generator=torch.Generator().manual_seed(k)) for k in range(rows)]
    while True:
        live = [r for r in batch if len(r.new) < max_new and not (r.new and r.new[-1] in stop)]
        if not live:
            break
        tokens = running.pick(model([r.new for r in live]), live)
        for r, t in zip(live, tokens.tolist()):
            r.new.append(t)
    return [r.new for r in batch], [r.constraint for r in batch]


def run_generate(loaded, grammar, model, max_new, rows, temperature):
    """Rows as ``generate`` takes them from ``constrain.Processor`` (its scores, then argmax or a draw)."""
    import torch

    from duckdb_ft.ml import constrain

    states = [constrain.start(grammar) for _ in range(rows)]
    processor = constrain.Processor(states, 1, max_new, temperature, 0.9)
    ids = torch.ones((rows, 1), dtype=torch.long)
    torch.manual_seed(0)
    for _ in range(max_new):
        scores = processor(ids, model(ids[:, 1:].tolist()))
        nxt = torch.multinomial(scores.softmax(-1), 1)[:, 0] if temperature > 0 else scores.argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids[:, 1:].tolist(), states


def test_a_document_that_fits_comes_out_whole(loaded):
    """The model spells a 54-token document with max_tokens 64; the nested schema's shortest document alone takes
    about 40 tokens, so closing from the start of the budget would cut the values after the first few tokens."""
    grammar = _grammar(loaded, NESTED)
    text = json.dumps(ANSWER)
    need = len(loaded.tokenizer.encode(text, add_special_tokens=False)) + 1
    assert grammar.reserve > 64 - need  # what the old reserve cut: more than the answer leaves over
    for max_new in (64, need):  # with room to spare, and exactly the answer and its end token
        news, states = run_greedy(loaded, grammar, Scripted(loaded, [text] * 2), max_new, 2)
        assert [json.loads(t) for t in _texts(loaded, news)] == [ANSWER, ANSWER], max_new
        assert all(s.done and s.closed == 0 for s in states)
    news, states = run_generate(loaded, grammar, Scripted(loaded, [text]), need, 1, 0.0)
    assert json.loads(_texts(loaded, news)[0]) == ANSWER


def test_a_document_too_long_for_its_budget_closes_with_its_last_token(loaded):
    """One token short of the answer: the model's values run until the budget allows no more, then the document
    closes, complete and valid, in exactly max_tokens tokens."""
    grammar = _grammar(loaded, NESTED)
    text = json.dumps(ANSWER)
    need = len(loaded.tokenizer.encode(text, add_special_tokens=False)) + 1
    news, states = run_greedy(loaded, grammar, Scripted(loaded, [text]), need - 1, 1)
    got = json.loads(_texts(loaded, news)[0])
    jsonschema.validate(got, NESTED)
    assert len(news[0]) <= need - 1 and states[0].done and states[0].closed >= 1
    assert {k: got[k] for k in ("name", "age", "city", "role")} == {k: ANSWER[k] for k in ("name", "age", "city",
                                                                                             "role")}


@pytest.mark.parametrize("path", ["greedy", "sampled", "generate", "generate-sampled"])
def test_a_model_that_keeps_strings_open_still_ends_every_row_valid(loaded, path):
    """The model opens the optional object (six required strings) and then only wants to write "x": the rows must
    close it and the document within max_tokens, on every path, at the tightest budgets too."""
    grammar = _grammar(loaded, LATE)
    late = '{"extra": {"a": "' + "x" * 200
    budgets = (grammar.reserve, grammar.reserve + 7, 40, 64) if path in ("greedy", "generate") else (
        grammar.reserve + 3, 40)  # sampling a 49k vocabulary is the slow part of these runs
    for max_new in budgets:
        model = Scripted(loaded, [late, late, '{"note": "' + "x" * 200], seed=max_new)
        if path == "greedy":
            news, states = run_greedy(loaded, grammar, model, max_new, 3)
        elif path == "sampled":
            news, states = run_sampled(loaded, grammar, model, max_new, 3)
        else:
            news, states = run_generate(loaded, grammar, model, max_new, 3, 0.9 if path == "generate-sampled" else 0)
        for new, s, text in zip(news, states, _texts(loaded, news)):
            assert s.done, (max_new, text)
            jsonschema.validate(json.loads(text), LATE)
            assert len([t for t in new if t != loaded.tokenizer.pad_token_id]) <= max_new


@pytest.mark.parametrize("schema", [NESTED, LATE, PATTERNED, LIST], ids=["nested", "late", "patterned", "list"])
def test_noise_ends_every_row_valid_at_every_budget(loaded, schema):
    """Random logits (a model that writes anything its grammar allows), greedy, from the shortest budget up, and
    sampled once: each row a complete document that validates, within max_tokens."""
    grammar = _grammar(loaded, schema)
    runs = [(run_greedy, n) for n in (grammar.reserve, grammar.reserve + 1, grammar.reserve + 5, 48)]
    for run, max_new in runs + [(run_sampled, grammar.reserve + 2)]:
        news, states = run(loaded, grammar, Scripted(loaded, ["", "", ""], seed=max_new), max_new, 3)
        for new, s, text in zip(news, states, _texts(loaded, news)):
            assert s.done and len(new) <= max_new, (run.__name__, max_new, text)
            jsonschema.validate(json.loads(text), schema)


def test_max_tokens_of_exactly_the_shortest_answer_is_enough(con, tiny_model_path, loaded):
    """The budget check is exact: max_tokens equal to the shortest answer and its end token answers (valid JSON),
    one less is the clear error before generation."""
    from conftest import rows as q

    from duckdb_ft.errors import InvalidArgument

    fmt = json.dumps({"type": "json", "schema": NESTED})
    need = _grammar(loaded, NESTED).reserve
    rows = q(con, f"SELECT ai_complete(?, 'Describe someone ' || i, {{'max_tokens': {need}}}, ?::VARCHAR) "
                  "FROM range(3) t(i)", tiny_model_path, fmt)
    for (text,) in rows:
        jsonschema.validate(json.loads(text), NESTED)
    with pytest.raises(InvalidArgument, match=f"max_tokens {need - 1} is too small .* needs {need} tokens"):
        q(con, f"SELECT ai_complete(?, 'hi', {{'max_tokens': {need - 1}}}, ?::VARCHAR)", tiny_model_path, fmt)


#: String patterns that loop (``+``, ``*``): the closing policy once took ``false`` inside ``[a-z]+`` forever and
#: refused the email schema as "too large". Each with what a model that never wants to leave the loop writes.
LOOPING = {
    "email": ("^[a-z]+@[a-z]+\\.com$", ['{"v": "' + "a" * 200, '{"v": "ab@' + "c" * 200]),
    "digits": ("^[0-9]+$", ['{"v": "' + "1" * 200, '{"v": "' + "9" * 200]),
    "words": ("^[a-z]+( [a-z]+)*$", ['{"v": "' + "ab " * 100, '{"v": "' + "a" * 200]),
}


@pytest.mark.parametrize("name", list(LOOPING))
def test_a_looping_string_pattern_closes_valid_within_max_tokens(loaded, name):
    """The schema compiles with a short shortest answer, and a model that wants to stay inside the pattern's loop
    (or, for the email, write its second part forever) still ends every row in a document whose value fully
    matches the pattern, within max_tokens, greedy and sampled, at the tightest budget too."""
    import re

    pattern, texts = LOOPING[name]
    schema = {"type": "object", "properties": {"v": {"type": "string", "pattern": pattern}}, "required": ["v"]}
    grammar = _grammar(loaded, schema)
    assert grammar.reserve <= 16, loaded.tokenizer.decode(list(grammar.shortest))
    fond = texts[0][len('{"v": "')]
    runs = [(run_greedy, grammar.reserve), (run_greedy, grammar.reserve + 3), (run_greedy, 40),
            (run_sampled, grammar.reserve + 2)]
    for run, max_new in runs:
        news, states = run(loaded, grammar, Scripted(loaded, texts, fond=fond, seed=max_new), max_new, 2)
        for new, s, text in zip(news, states, _texts(loaded, news)):
            assert s.done and len(new) <= max_new, (run.__name__, max_new, text)
            value = json.loads(text)
            jsonschema.validate(value, schema)
            assert re.fullmatch(pattern.strip("^$"), value["v"]), (run.__name__, max_new, text)
        if run is run_greedy and max_new == 40:
            assert any(len(json.loads(t)["v"]) > 10 for t in _texts(loaded, news))  # the model wrote, not the policy


@pytest.mark.parametrize("name", list(LOOPING))
def test_ai_complete_answers_a_looping_pattern_with_matching_values(con, tiny_model_path, name):
    """The tiny random model through ai_complete(..., response_format => ...): every row's value matches the
    pattern (Python's re.fullmatch), greedy and sampled."""
    import re

    from conftest import rows as q

    pattern = LOOPING[name][0]
    fmt = json.dumps({"type": "json", "schema": {"type": "object", "properties": {
        "v": {"type": "string", "pattern": pattern}}, "required": ["v"]}})
    for options in ("{'max_tokens': 24}", "{'max_tokens': 20, 'temperature': 0.9}"):
        rows = q(con, f"SELECT ai_complete(?, 'Write a value ' || i, {options}, response_format => ?::VARCHAR) "
                      "FROM range(4) t(i)", tiny_model_path, fmt)
        assert len(rows) == 4
        for (text,) in rows:
            assert re.fullmatch(pattern.strip("^$"), json.loads(text)["v"]), (options, text)
