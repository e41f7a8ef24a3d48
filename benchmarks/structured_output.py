"""AI_COMPLETE's structured output: the cost of constrained decoding, and what it buys, on the base model and on a
model fine-tuned for the task from SQL.

First (unless ``--train-rows 0``) a model is fine-tuned for the extraction from SQL: ``finetune('CREATE',
'extract_bot', BASE, 'SELECT prompt, completion FROM train_pairs')`` with FINETUNE's defaults plus ``max_epochs``
(``--epochs``) and ``learning_rate`` (``--learning-rate``), on ``--train-rows`` prompt -> JSON pairs made by code
(:func:`train_pairs`): other names, cities, ages, hobbies and email domains than the evaluation's, so no training
prompt is an evaluation prompt (checked) and every evaluated value has to be read from its sentence. With
``--database FILE`` the model is kept in that file, and a later run on the same file reuses it instead of training
(so code before and after a change can be compared on one model).

Then, on each model (``--model``, default ``smollm2-135m``, e.g. a test model folder; and the fine-tuned one),
``--rows`` extraction prompts (a sentence about a person; the prompt names the fields and asks for JSON),
greedy, ``max_tokens`` ``--max-tokens``, the same prompts twice in one run:

- **unconstrained**: ``ai_complete(model, prompt, {'max_tokens': N}, show_details => true)``;
- **constrained**: the same with ``response_format => {'type': 'json', 'schema': SCHEMA}`` (a nested object:
  name, age, city, an enum, a list of strings, a nested contact object).

Each pass is timed whole (``time.perf_counter``) after a warm-up that loads the model (and the adapter) and
compiles the grammar; with ``--repeat R`` the passes run R rounds, interleaved, and each keeps its fastest.
Reported per model: rows/s and completion tokens/s of each pass, their ratio, the share of rows whose answer
parses as JSON and validates against the schema (``jsonschema``), exact field accuracy against the sentence's
values (name, age, city, role, interests, contact.email: :data:`FIELDS`) over every row (a row that does not
validate scores 0), and the time spent in the grammar (masks filled and applied, tokens taken and closing paths kept:
``duckdb_ft/ml/constrain.py``) per generated token.

Run from the repository root:

    DUCKDB_FT_CACHE=.pytest_cache/model-cache .venv/bin/python benchmarks/structured_output.py --rows 200
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jsonschema

import duckdb_ft
from duckdb_ft.ml import constrain

import machine  # benchmarks/machine.py

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
    "role": {"type": "string", "enum": ["customer", "supplier", "employee"]},
    "interests": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    "contact": {"type": "object", "properties": {"email": {"type": "string"}, "vip": {"type": "boolean"}},
                "required": ["email", "vip"]}},
    "required": ["name", "age", "city", "role", "contact"]}
NAMES = ["Ann Lee", "Bob Stone", "Carla Diaz", "Dmitri Ivanov", "Emma Brown", "Farid Khan", "Grace Kim", "Hugo Moreau"]
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Dublin", "Austin"]
HOBBIES = ["hiking", "chess", "jazz"]
ROLES = ["customer", "supplier", "employee"]
#: The training pairs' values: none is an evaluation value (ages 21-70 there, 71-90 and 16-20 here).
TRAIN_NAMES = ["Iris Novak", "Jonas Berg", "Keiko Sato", "Liam Walsh", "Maya Singh", "Nora Fischer", "Omar Haddad",
               "Pablo Ruiz", "Quinn Baker", "Rosa Costa", "Sven Larsen", "Tara Okafor", "Umar Aziz", "Vera Popova"]
TRAIN_CITIES = ["Berlin", "Tokyo", "Quito", "Nairobi", "Lisbon", "Denver", "Hanoi", "Perth", "Riga", "Tunis"]
TRAIN_HOBBIES = ["tennis", "painting", "cooking", "sailing", "poetry", "cycling", "opera"]
#: The fields scored against the sentence: (label, path into the answer).
FIELDS = [("name", ("name",)), ("age", ("age",)), ("city", ("city",)), ("role", ("role",)),
          ("interests", ("interests",)), ("email", ("contact", "email"))]
TUNED = "extract_bot"


def _prompt(name: str, age: int, city: str, role: str, email: str, hobby: str) -> str:
    text = (f"{name} is {age} years old, lives in {city} and is a {role} of ours. Reach them at {email}; "
            f"they like {hobby}.")
    return ("Extract as JSON with fields name, age, city, role (customer, supplier or employee), interests "
            f"(a list), contact (email, vip true/false). Text: {text}")


def rows(n: int) -> list[tuple[str, dict]]:
    """The evaluation prompts and each one's reference values (:data:`FIELDS`)."""
    out = []
    for i in range(n):
        name, city, role, age = NAMES[i % len(NAMES)], CITIES[i % len(CITIES)], ROLES[i % 3], 21 + (i * 7) % 50
        email, hobby = name.split()[0].lower() + "@example.com", HOBBIES[i % 3]
        out.append((_prompt(name, age, city, role, email, hobby),
                    {"name": name, "age": age, "city": city, "role": role, "interests": [hobby], "email": email}))
    return out


def train_pairs(n: int) -> list[tuple[str, str]]:
    """``n`` distinct prompt -> JSON completion pairs of the evaluation's form on the training values."""
    out, seen, i = [], set(), 0
    while len(out) < n:
        name, city = TRAIN_NAMES[i % len(TRAIN_NAMES)], TRAIN_CITIES[(i * 3) % len(TRAIN_CITIES)]
        role, hobby = ROLES[(i // 2) % 3], TRAIN_HOBBIES[(i * 5) % len(TRAIN_HOBBIES)]
        age = [16, 17, 18, 19, 20][i % 5] if i % 4 == 0 else 71 + (i * 11) % 20
        first, last = name.lower().split()
        email = [f"{first}@mail.test", f"{first}.{last}@corp.test", f"{last}{age}@post.test"][i % 3]
        i += 1
        prompt = _prompt(name, age, city, role, email, hobby)
        if prompt in seen:
            continue
        seen.add(prompt)
        answer = {"name": name, "age": age, "city": city, "role": role, "interests": [hobby],
                  "contact": {"email": email, "vip": False}}
        out.append((prompt, json.dumps(answer)))
    return out


def _value(answer: dict, path: tuple[str, ...]):
    for key in path:
        answer = answer.get(key) if isinstance(answer, dict) else None
    return answer


def _has_model(con, name: str) -> bool:
    return any(row[1] == name for row in con.execute("SHOW MODELS").fetchall())


def finetune(con, base: str, pairs: list[tuple[str, str]], epochs: int, learning_rate: float) -> dict:
    """The extraction model trained from SQL; FINETUNE's DESCRIBE and the wall time, CREATE to SUCCESS."""
    con.execute("DROP TABLE IF EXISTS train_pairs")
    con.execute("CREATE TABLE train_pairs (prompt VARCHAR, completion VARCHAR)")
    con.executemany("INSERT INTO train_pairs VALUES (?, ?)", pairs)
    options = json.dumps({"max_epochs": epochs, "learning_rate": learning_rate})
    t = time.perf_counter()
    job = con.execute("SELECT finetune('CREATE', ?, ?, 'SELECT prompt, completion FROM train_pairs', NULL, ?)",
                      [TUNED, base, options]).fetchall()[0][0]
    status = con.execute("SELECT finetune('WAIT', ?, 3600)", [job]).fetchall()[0][0]
    seconds = time.perf_counter() - t
    info = json.loads(con.execute("SELECT finetune('DESCRIBE', ?)", [job]).fetchall()[0][0])
    if status != "SUCCESS":
        raise SystemExit(f"fine-tuning ended {status}: {info.get('error')}")
    return {"job": job, "options": options, "train_rows": info.get("train_rows"),
            "validation_rows": info.get("validation_rows"), "trained_tokens": info.get("trained_tokens"),
            "training_result": info.get("training_result"), "seconds": round(seconds, 1)}






def _timed_grammar() -> list[float]:
    """A counter of the seconds spent in the grammar, around constrain's two per-step calls."""
    grammar_s = [0.0]
    for fn in ("mask_rows", "take"):
        orig = getattr(constrain, fn)

        def timed(*a, _orig=orig, **k):
            t = time.perf_counter()
            try:
                return _orig(*a, **k)
            finally:
                grammar_s[0] += time.perf_counter() - t
        setattr(constrain, fn, timed)
    return grammar_s


def _score(out: list, data: list[tuple[str, dict]]) -> dict:
    valid = tokens = 0
    exact = dict.fromkeys([label for label, _ in FIELDS], 0)
    for (_, text), (_, ref) in zip(out, data):
        body = json.loads(text)
        tokens += body["usage"]["completion_tokens"]
        try:
            answer = json.loads(body["choices"][0]["messages"])
            jsonschema.validate(answer, SCHEMA)
        except (ValueError, jsonschema.ValidationError):
            continue
        valid += 1
        for label, path in FIELDS:
            exact[label] += _value(answer, path) == ref[label]
    return {"valid": valid, "tokens": tokens, "exact": exact}


def evaluate(con, model: str, data: list[tuple[str, dict]], max_tokens: int, repeat: int,
             grammar_s: list[float]) -> dict:
    """Both passes on one model, interleaved ``repeat`` rounds, each pass's fastest kept."""
    n = len(data)
    fmt = json.dumps({"type": "json", "schema": SCHEMA})
    params = f"{{'max_tokens': {max_tokens}}}"
    sql = {
        "unconstrained": f"SELECT id, ai_complete(?, prompt, {params}, show_details => true) FROM prompts ORDER BY id",
        "constrained": f"SELECT id, ai_complete(?, prompt, {params}, ?::VARCHAR, true) FROM prompts ORDER BY id",
    }
    binds = {"unconstrained": [model], "constrained": [model, fmt]}
    t0 = time.perf_counter()
    con.execute(sql["constrained"].replace("FROM prompts", "FROM prompts WHERE id = 0"), binds["constrained"]).fetchall()
    report: dict = {"warm_up_s": round(time.perf_counter() - t0, 2)}
    best: dict[str, tuple[float, list, float]] = {}
    for _ in range(repeat):
        for name in ("unconstrained", "constrained"):
            grammar_s[0] = 0.0
            t = time.perf_counter()
            out = con.execute(sql[name], binds[name]).fetchall()
            dt = time.perf_counter() - t
            if name not in best or dt < best[name][0]:
                best[name] = (dt, out, grammar_s[0])
            print(f"  {model} {name}: {dt:.1f} s (load {machine.load()})", flush=True)
    for name, (dt, out, grammar) in best.items():
        s = _score(out, data)
        report[name] = {"seconds": round(dt, 2), "rows_per_s": round(n / dt, 3),
                        "tokens_per_s": round(s["tokens"] / dt, 1), "completion_tokens": s["tokens"],
                        "valid_rows": f"{s['valid']}/{n}", "exact_fields": f"{sum(s['exact'].values())}/{len(FIELDS) * n}",
                        "exact_by_field": {k: f"{v}/{n}" for k, v in s["exact"].items()}}
        if name == "constrained":
            report[name]["grammar_ms_per_token"] = round(1000 * grammar / max(s["tokens"], 1), 3)
    u, c = report["unconstrained"], report["constrained"]
    report["rows_per_s_ratio"] = round(c["rows_per_s"] / u["rows_per_s"], 3)
    report["tokens_per_s_ratio"] = round(c["tokens_per_s"] / u["tokens_per_s"], 3)
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--train-rows", type=int, default=200, help="0: no fine-tuned model, the base model alone")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--database", help="a database file to keep the fine-tuned model in: a later run on the same "
                                       "file reuses it instead of training again (default: in memory)")
    args = ap.parse_args()
    con = duckdb_ft.connect(args.database or ":memory:")
    con.execute("DROP TABLE IF EXISTS prompts")
    data = rows(args.rows)
    pairs = train_pairs(args.train_rows)
    overlap = {p for p, _ in pairs} & {p for p, _ in data}
    assert not overlap, f"training prompts among the evaluation prompts: {sorted(overlap)[:2]}"
    con.execute("CREATE TABLE prompts (id INTEGER, prompt VARCHAR)")
    con.executemany("INSERT INTO prompts VALUES (?, ?)", [(i, p) for i, (p, _) in enumerate(data)])
    report: dict = {"model": args.model, "rows": args.rows, "max_tokens": args.max_tokens, "repeat": args.repeat,
                    "processor": machine.cpu(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "load_at_start": machine.load()}
    models = [args.model]
    if pairs and _has_model(con, TUNED):
        print(f"{TUNED} is already in {args.database}: not trained again", flush=True)
        report["finetune"] = {"reused_from": args.database}
        models.append(TUNED)
    elif pairs:
        print(f"fine-tuning {TUNED} on {len(pairs)} pairs (load {machine.load()})", flush=True)
        report["finetune"] = finetune(con, args.model, pairs, args.epochs, args.learning_rate)
        report["finetune"]["load_after"] = machine.load()
        models.append(TUNED)
    grammar_s = _timed_grammar()
    report["results"] = {}
    for model in models:
        report["results"][model] = evaluate(con, model, data, args.max_tokens, args.repeat, grammar_s)
        report["results"][model]["load_after"] = machine.load()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
