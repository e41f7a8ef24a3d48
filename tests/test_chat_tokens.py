"""The chat template rendered once (ml/chat_tokens.py) gives exactly the token ids of rendering each pair with
apply_chat_template and tokenizing it, on edge cases; a template it cannot follow falls back to rendering."""

from __future__ import annotations

import random

import pytest

from duckdb_ft.ml import chat_tokens, data


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    from duckdb_ft.ml import models

    return models.load_tokenizer(default_model_path)


def _reference(tok, pairs):
    """What encode_pairs gave before: two Jinja renders per pair, each part tokenized on its own."""
    parts = [chat_tokens.render_parts(tok, p, c) for p, c in pairs]
    return ([tok(p, add_special_tokens=False)["input_ids"] for p, _ in parts],
            [tok(c, add_special_tokens=False)["input_ids"] for _, c in parts])


def _edge_rows(tok, n=3000):
    rng = random.Random(3)
    specials = [t.content for t in tok.added_tokens_decoder.values()][:6]
    alphabet = list("ab Z\n\t.,!?<>|_{}%#'\"\\\r") + ["\u00e9", "\u6f22", "\U0001f642", "\u00a0", "  ", "\n\n",
                                                      "{{", "}}", "{%", "%}", "0123", " order 42"] + specials
    rows = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24))) for _ in range(n)]
    fixed = ["", " ", "\n", "What is the status of order 7?", " lead", "trail ", "\n\nx\n\n", specials[2] + "x",
             "x" + specials[2], "<|im_start|>assistant\n", "user\n", "\u00e9\u6f22\u5b57"]
    return list(zip(fixed + rows, fixed[::-1] + rows[::-1]))


def test_planned_encoding_gives_the_jinja_paths_token_ids_on_edge_cases(tokenizer):
    enc = chat_tokens.encoder(tokenizer)
    assert enc.plan is not None  # SmolLM2's template inserts contents verbatim: the fast path is taken
    pairs = _edge_rows(tokenizer)
    want = _reference(tokenizer, pairs)
    prompts, completions = [p for p, _ in pairs], [c for _, c in pairs]
    assert enc.encode(prompts, completions) == want
    assert enc.plan is not None  # the batch check agreed
    assert enc.lengths(prompts, completions) == ([len(x) for x in want[0]], [len(x) for x in want[1]])
    assert data.encode_pairs(tokenizer, pairs) == want


def test_a_template_that_changes_the_contents_falls_back_to_rendering_each_pair(default_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path)
    tok.chat_template = tok.chat_template.replace("message['content']", "message['content'] | trim")
    enc = chat_tokens.PairEncoder(tok)
    assert enc.plan is None
    pairs = _edge_rows(tok, 200)
    assert enc.encode([p for p, _ in pairs], [c for _, c in pairs]) == _reference(tok, pairs)


def test_a_batch_whose_first_pair_disagrees_drops_the_plan(default_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path)
    tok.chat_template = tok.chat_template.replace(
        "message['content']", "(message['content'] if 'SECRET' not in message['content'] else 'hidden')")
    enc = chat_tokens.PairEncoder(tok)
    assert enc.plan is not None  # no probe holds SECRET
    pairs = [("a SECRET here", "b"), ("plain", "text")]
    assert enc.encode([p for p, _ in pairs], [c for _, c in pairs]) == _reference(tok, pairs)
    assert enc.plan is None
