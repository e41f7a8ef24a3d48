"""AI_COMPLETE's structured output: the cost of constrained decoding, and what it buys.

On one loaded model (default ``smollm2-135m``; ``--model`` names another, e.g. a test model folder), ``--rows``
extraction prompts (a sentence about a person; the prompt names the fields and asks for JSON), greedy,
``max_tokens`` ``--max-tokens``, the same prompts twice in one run:

- **unconstrained**: ``ai_complete(model, prompt, {'max_tokens': N}, show_details => true)``;
- **constrained**: the same with ``response_format => {'type': 'json', 'schema': SCHEMA}`` (a nested object:
  name, age, city, an enum, a list of strings, a nested contact object).

Each pass is timed whole (``time.perf_counter``) after a warm-up that loads the model and compiles the grammar;
with ``--repeat R`` the two passes run R rounds, interleaved, and each keeps its fastest. Reported: rows/s and
completion tokens/s of each, their ratio, the share of rows whose answer parses as JSON and validates against the
schema (``jsonschema``), exact field accuracy of name, age and city against the sentence's values, and the time
spent in the grammar (masks filled and applied, tokens accepted: ``duckdb_ft/ml/constrain.py``) per generated
token.

Run from the repository root:

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/structured_output.py --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jsonschema

import duckdb_ft
from duckdb_ft.ml import constrain

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
    "role": {"type": "string", "enum": ["customer", "supplier", "employee"]},
    "interests": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    "contact": {"type": "object", "properties": {"email": {"type": "string"}, "vip": {"type": "boolean"}},
                "required": ["email", "vip"]}},
    "required": ["name", "age", "city", "role", "contact"]}
NAMES = ["Ann Lee", "Bob Stone", "Carla Diaz", "Dmitri Ivanov", "Emma Brown", "Farid Khan", "Grace Kim", "Hugo Moreau"]
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Dublin", "Austin"]
ROLES = ["customer", "supplier", "employee"]


def rows(n: int) -> list[tuple[str, dict]]:
    out = []
    for i in range(n):
        name, city, role, age = NAMES[i % len(NAMES)], CITIES[i % len(CITIES)], ROLES[i % 3], 21 + (i * 7) % 50
        email = name.split()[0].lower() + "@example.com"
        text = (f"{name} is {age} years old, lives in {city} and is a {role} of ours. Reach them at {email}; "
                f"they like {['hiking', 'chess', 'jazz'][i % 3]}.")
        prompt = ("Extract as JSON with fields name, age, city, role (customer, supplier or employee), interests "
                  f"(a list), contact (email, vip true/false). Text: {text}")
        out.append((prompt, {"name": name, "age": age, "city": city}))
    return out


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    con = duckdb_ft.connect()
    data = rows(args.rows)
    con.execute("CREATE TABLE prompts (id INTEGER, prompt VARCHAR)")
    con.executemany("INSERT INTO prompts VALUES (?, ?)", [(i, p) for i, (p, _) in enumerate(data)])
    fmt = json.dumps({"type": "json", "schema": SCHEMA})
    params = f"{{'max_tokens': {args.max_tokens}}}"
    sql = {
        "unconstrained": f"SELECT id, ai_complete(?, prompt, {params}, show_details => true) FROM prompts ORDER BY id",
        "constrained": f"SELECT id, ai_complete(?, prompt, {params}, ?::VARCHAR, true) FROM prompts ORDER BY id",
    }
    binds = {"unconstrained": [args.model], "constrained": [args.model, fmt]}
    t0 = time.perf_counter()
    con.execute(sql["constrained"].replace("FROM prompts", "FROM prompts WHERE id = 0"), binds["constrained"]).fetchall()
    warm = time.perf_counter() - t0
    grammar_s = [0.0]
    for fn in ("mask_rows", "accept"):  # time spent in the grammar, counted around constrain's two per-step calls
        orig = getattr(constrain, fn)

        def timed(*a, _orig=orig, **k):
            t = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                grammar_s[0] += time.perf_counter() - t
        setattr(constrain, fn, timed)
    best: dict[str, tuple[float, list]] = {}
    grammar = []
    for _ in range(args.repeat):
        for name in ("unconstrained", "constrained"):
            grammar_s[0] = 0.0
            t = time.perf_counter()
            out = con.execute(sql[name], binds[name]).fetchall()
            dt = time.perf_counter() - t
            if name == "constrained":
                grammar.append(grammar_s[0])
            if name not in best or dt < best[name][0]:
                best[name] = (dt, out)
    report = {"model": args.model, "rows": args.rows, "max_tokens": args.max_tokens, "repeat": args.repeat,
              "processor": _cpu(), "date": time.strftime("%Y-%m-%d"), "warm_up_s": round(warm, 2)}
    for name, (dt, out) in best.items():
        valid = exact = tokens = 0
        for (i, text), (_, ref) in zip(out, data):
            body = json.loads(text)
            tokens += body["usage"]["completion_tokens"]
            try:
                answer = json.loads(body["choices"][0]["messages"])
                jsonschema.validate(answer, SCHEMA)
            except (ValueError, jsonschema.ValidationError):
                continue
            valid += 1
            exact += sum(answer.get(k) == v for k, v in ref.items())
        report[name] = {"seconds": round(dt, 2), "rows_per_s": round(args.rows / dt, 3),
                        "tokens_per_s": round(tokens / dt, 1), "completion_tokens": tokens,
                        "valid_rows": f"{valid}/{args.rows}", "exact_fields": f"{exact}/{3 * args.rows}"}
        if name == "constrained":
            report[name]["grammar_ms_per_token"] = round(1000 * min(grammar) / max(tokens, 1), 3)
    u, c = report["unconstrained"], report["constrained"]
    report["rows_per_s_ratio"] = round(c["rows_per_s"] / u["rows_per_s"], 3)
    report["tokens_per_s_ratio"] = round(c["tokens_per_s"] / u["tokens_per_s"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
