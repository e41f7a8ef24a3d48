"""Data preparation: FINETUNE 'ESTIMATE' on a table with known numbers of every finding (each count exact), its
trained_tokens equal to DESCRIBE's after CREATE, cleaning at CREATE (dedupe, pii, drop_conflicting) on the snapshot
only, and bad input refused as CREATE refuses it, with nothing left behind."""

from __future__ import annotations

import json
import random

import duckdb
import pytest

from conftest import catalog_counts, one
from duckdb_ft.prep import pii

from conftest import allow_base_model

SMALL = {"max_epochs": 1, "batch_size": 8, "max_seq_length": 128}

_rng = random.Random()


def _words(n: int) -> str:
    return " ".join("".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(n))


@pytest.fixture
def dirty(con):
    """67 training rows: 40 unique; 5 with a NULL; 4 exact copies; 3 conflicting; 5 near duplicates; 3 with an
    e-mail; 2 with a Luhn-valid card number and 1 with an invalid one; 3 over-long (one over the tiny model's 512
    positions, one whose prompt fills max_seq_length 128); 1 whitespace-only completion. 12 validation rows, 2 of
    them with a training prompt."""
    _rng.seed(7)  # the same rows in every test, whatever ran before
    base = [(f"Question: {_words(8)}", _words(4)) for _ in range(40)]
    rows = list(base)
    rows += [(None, "lost answer"), (None, "another"), (None, None), ("lost question", None), (_words(3), None)]
    rows += base[0:4]                                                            # exact duplicates
    rows += [(base[i][0], "a different answer " + _words(2)) for i in (4, 5, 6)]  # conflicting
    rows += [(base[i][0].upper() + " ?!", _words(3)) for i in (7, 8, 9)]          # near: same normalized text
    rows += [(base[i][0] + " please", _words(3)) for i in (10, 11)]               # near: one word more
    rows += [(f"Write to {n}@example.com about {_words(5)}", _words(3)) for n in ("ann", "bob.smith", "c_d")]
    rows += [(f"Pay the order {_words(5)}", f"Charged card {c} for {_words(2)}")
             for c in ("4111 1111 1111 1111", "5500-0000-0000-0004", "4111 1111 1111 1112")]
    rows += [(f"Summarize {_words(4)}", _words(80)), (f"Tell {_words(4)}", _words(300)),
             (f"Read this: {_words(60)}", _words(3))]
    rows += [(f"Say nothing about {_words(5)}", "   ")]
    val = [(f"Check: {_words(8)}", _words(4)) for _ in range(10)] + [(base[20][0], _words(4)), (base[21][0], "x")]
    con.execute("CREATE TABLE pairs (id INTEGER, question VARCHAR, answer VARCHAR)")
    con.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [(i, p, c) for i, (p, c) in enumerate(rows)])
    con.execute("CREATE TABLE held (id INTEGER, question VARCHAR, answer VARCHAR)")
    con.executemany("INSERT INTO held VALUES (?, ?, ?)", [(i, p, c) for i, (p, c) in enumerate(val)])
    assert len(rows) == 67
    return con


TRAIN = "SELECT question AS prompt, answer AS completion FROM pairs ORDER BY id"
VALID = "SELECT question AS prompt, answer AS completion FROM held ORDER BY id"


def estimate(con, train=TRAIN, valid=VALID, options=SMALL, base=None):
    return json.loads(one(con, "SELECT finetune('ESTIMATE', ?, ?, ?, ?)", base, train, valid,
                           json.dumps(options) if options is not None else None))


@pytest.mark.slow
def test_estimate_reports_each_known_count_exactly(dirty, tiny_model_path):
    con = dirty
    before = catalog_counts(con)
    r = estimate(con, base=tiny_model_path)
    assert catalog_counts(con) == before  # no job, no rows
    assert r["rows"]["returned"] == {"training_query": 67, "validation_query": 12}
    assert r["rows"]["skipped"] == 5 and r["rows"]["empty"] == 1
    d = r["duplicates"]
    assert (d["exact_duplicate_rows"], d["conflicting_prompts"], d["conflicting_rows"]) == (4, 3, 6)
    assert d["near_duplicate_rows"] == 5 and d["near_threshold"] == 0.8
    assert d["validation_leak_rows"] == 2
    p = r["personal_data"]
    assert set(p) == {"EMAIL", "CARD"}
    assert (p["EMAIL"]["values"], p["EMAIL"]["training_rows"]) == (3, [58, 59, 60])
    assert (p["CARD"]["values"], p["CARD"]["training_rows"]) == (2, [61, 62])
    t = r["tokens"]
    assert (t["truncated_rows"], t["over_context_rows"], t["nothing_to_learn_rows"]) == (3, 1, 1)
    assert t["context_length"] == 512 and t["prompt"]["min"] <= t["prompt"]["p50"] <= t["prompt"]["max"]
    # default cleaning: the 4 exact copies dropped; the long-prompt row has nothing to learn.
    assert r["cleaning"]["dropped"] == {"exact_duplicate": 4, "conflicting": 0, "near_duplicate": 0}
    assert r["rows"]["kept"] == {"train": 67 - 5 - 4 - 1, "validation": 12}
    kinds = {w["finding"] for w in r["warnings"]}
    assert {"few_rows", "exact_duplicate", "conflicting", "near_duplicate", "validation_leak", "personal_data",
            "truncated", "over_context", "nothing_to_learn", "small_validation"} <= kinds
    assert all(w["fix"] for w in r["warnings"])

    per_row = con.execute("SELECT finding, count(*) FROM finetune_data_report(?, ?, ?, ?) GROUP BY ALL",
                          [tiny_model_path, TRAIN, VALID, json.dumps(SMALL)]).fetchall()
    assert dict(per_row) == {"skipped": 5, "exact_duplicate": 4, "conflicting": 6, "near_duplicate": 5,
                             "validation_leak": 2, "pii": 5, "truncated": 3, "over_context": 1,
                             "nothing_to_learn": 1}
    leak = con.execute("SELECT query, row, split, other_row FROM finetune_data_report(?, ?, ?) "
                       "WHERE finding = 'validation_leak' ORDER BY row", [tiny_model_path, TRAIN, VALID]).fetchall()
    assert leak == [("validation", 11, "validation", 21), ("validation", 12, "validation", 22)]
    dup = con.execute("SELECT row, other_row, dropped FROM finetune_data_report(?, ?) WHERE finding = "
                      "'exact_duplicate' ORDER BY row", [tiny_model_path, TRAIN]).fetchall()
    assert dup == [(46, 1, "exact_duplicate"), (47, 2, "exact_duplicate"), (48, 3, "exact_duplicate"),
                   (49, 4, "exact_duplicate")]


@pytest.mark.slow
def test_estimate_trained_tokens_equal_describe_after_create(dirty, tiny_model_path):
    con = dirty
    opts = {**SMALL, "dedupe": "near", "drop_conflicting": True, "pii": "mask"}
    r = estimate(con, options=opts, base=tiny_model_path)
    assert r["cleaning"]["dropped"] == {"exact_duplicate": 4, "conflicting": 6, "near_duplicate": 5}
    assert r["cleaning"]["masked"] == {"CARD": 2, "EMAIL": 3}
    job = one(con, "SELECT finetune('CREATE', 'clean_bot', ?, ?, ?, ?)", tiny_model_path, TRAIN, VALID,
               json.dumps(opts))
    assert one(con, "SELECT finetune('WAIT', ?, 300)", job) == "SUCCESS"
    d = json.loads(one(con, "SELECT finetune('DESCRIBE', ?)", job))
    assert d["trained_tokens"] == r["cost"]["trained_tokens"] > 0
    assert d["total_steps"] == r["cost"]["total_steps"]
    assert (d["train_rows"], d["validation_rows"]) == (67 - 5 - 4 - 6 - 5, 12)
    assert d["cleaning"] == r["cleaning"]
    assert d["truncated_rows"] == r["tokens"]["truncated_rows"]


def test_pii_mask_leaves_no_email_or_card_in_the_snapshot_and_the_table_unchanged(dirty, tiny_model_path):
    con = dirty
    table = con.execute("SELECT count(*), sum(hash(id, question, answer)) FROM pairs").fetchall()
    job = one(con, "SELECT finetune('CREATE', 'masked', ?, ?, NULL, ?)", tiny_model_path, TRAIN,
               json.dumps({**SMALL, "pii": "mask"}))
    stored = con.execute("SELECT prompt, completion FROM duckdb_ft.job_rows WHERE job_id = ?", [job]).fetchall()
    assert len(stored) == 67 - 5 - 4
    for p, c in stored:
        assert not [k for k, _, _ in pii.find(p) + pii.find(c) if k in ("EMAIL", "CARD")], (p, c)
        assert "@example.com" not in p and "4111 1111 1111 1111" not in c
    texts = " ".join(p + " " + c for p, c in stored)
    assert texts.count("<EMAIL>") == 3 and texts.count("<CARD>") == 2
    assert "4111 1111 1111 1112" in texts  # not Luhn-valid: not a card number
    assert con.execute("SELECT count(*), sum(hash(id, question, answer)) FROM pairs").fetchall() == table
    d = json.loads(one(con, "SELECT finetune('DESCRIBE', ?)", job))
    assert d["cleaning"]["masked"] == {"CARD": 2, "EMAIL": 3} and d["cleaning"]["dropped"]["exact_duplicate"] == 4
    assert one(con, "SELECT finetune('CANCEL', ?)", job).startswith("Canceled")


@pytest.mark.slow
def test_dedupe_none_keeps_every_row_and_refuse_lists_the_rows(dirty, tiny_model_path):
    con = dirty
    job = one(con, "SELECT finetune('CREATE', 'all_rows', ?, ?, NULL, ?)", tiny_model_path, TRAIN,
               json.dumps({**SMALL, "dedupe": "none"}))
    assert one(con, "SELECT count(*) FROM duckdb_ft.job_rows WHERE job_id = ?", job) == 67 - 5
    assert one(con, "SELECT finetune('CANCEL', ?)", job).startswith("Canceled")
    before = catalog_counts(con)
    with pytest.raises(duckdb.Error, match=r'personal data \(CARD, EMAIL\) in 5 row\(s\), and the option pii is '
                                           r'"refuse": training rows 58, 59, 60, 61, 62'):
        one(con, "SELECT finetune('CREATE', 'refused', ?, ?, NULL, ?)", tiny_model_path, TRAIN,
             json.dumps({**SMALL, "pii": "refuse"}))
    assert catalog_counts(con) == before
    r = estimate(con, options={**SMALL, "pii": "refuse"}, base=tiny_model_path)  # ESTIMATE says CREATE would fail
    assert r["warnings"][0]["finding"] == "create_fails" and "training rows 58, 59" in r["warnings"][0]["message"]


BAD = [
    ((None, TRAIN, None, '{"dedupe": "fuzzy"}'), 'dedupe must be one of "exact", "near", "none"'),
    ((None, TRAIN, None, '{"pii": true}'), 'pii must be one of "keep", "mask", "refuse"'),
    ((None, TRAIN, None, '{"epochs": 2}'), r"unknown FINETUNE option\(s\): epochs"),
    ((None, "DROP TABLE pairs", None, None), "must be a SELECT statement, got DROP"),
    ((None, "SELECT question, answer FROM pairs", None, None), "must return columns prompt and completion"),
    ((None, "SELECT question AS prompt, id AS completion FROM pairs", None, None), "must be text"),
    ((None, "SELECT question AS prompt, answer AS completion FROM pairs WHERE id < 0", None, None),
     "returned no row with both prompt and completion non-NULL"),
    (("no-such-base", TRAIN, None, None), "unknown model 'no-such-base'"),
    ((None, TRAIN, "SELECT 1 AS prompt", None), "the validation query must return columns prompt and completion"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_estimate_is_creates_error_and_changes_nothing(dirty, tiny_model_path, args, message):
    con = dirty
    before = catalog_counts(con)
    tables = con.execute("SELECT count(*) FROM duckdb_tables()").fetchall()
    base, train, valid, options = args
    for action in ("ESTIMATE", "CREATE"):
        call = ("SELECT finetune('ESTIMATE', ?, ?, ?, ?)" if action == "ESTIMATE" else
                "SELECT finetune('CREATE', 'bad_one', ?, ?, ?, ?)")
        with pytest.raises(duckdb.Error, match=message):
            con.execute(call, [base or tiny_model_path, train, valid, options]).fetchall()
    assert catalog_counts(con) == before
    assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchall() == tables


def test_estimate_missing_arguments(con):
    with pytest.raises(duckdb.Error, match=r"finetune\('ESTIMATE', base_model, training_query"):
        one(con, "SELECT finetune('ESTIMATE', 'smollm2-135m')")


@pytest.mark.parametrize("text, kinds", [
    ("mail john.doe+x@example.co.uk now", ["EMAIL"]),
    ("card 4111 1111 1111 1111 and 4111-1111-1111-1112", ["CARD"]),
    ("IBAN GB82 WEST 1234 5698 7654 32, DE89370400440532013000", ["IBAN", "IBAN"]),
    ("bad IBAN DE89370400440532013001", []),
    ("hosts 192.168.1.20, 999.1.1.1, 2001:db8::1", ["IP", "IP"]),
    ("call +44 20 7946 0958 or (555) 123-4567", ["PHONE", "PHONE"]),
    ("on 2024-01-15 at 10:30, version 1.2.3, order 12345", []),
])
def test_personal_data_kinds(text, kinds):
    assert [k for k, _, _ in pii.find(text)] == kinds
    masked = pii.mask(text)
    assert all(f"<{k}>" in masked for k in kinds) and not pii.find(masked)


def test_sql_prefilter_passes_every_text_that_holds_personal_data():
    """The DuckDB pre-filter skips texts before the Python search: it must never skip one that holds a value."""
    import random

    import duckdb

    rng = random.Random(7)
    pieces = list("0123456789 -.:+()@aZ\u0663\u0967") + ["DE89", "GB82", "4111", "1111", "example.com", "::", "192."]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(20000)]
    texts += ["mail john.doe+x@example.co.uk now", "card 4111 1111 1111 1111", "IBAN GB82 WEST 1234 5698 7654 32",
              "hosts 192.168.1.20, 2001:db8::1", "call +44 20 7946 0958 or (555) 123-4567", "+4420794609",
              "\u0664\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661"]
    holding = [t for t in texts if pii.find(t)]
    con = duckdb.connect()
    passed = con.execute("SELECT list(regexp_matches(t, ?)) FROM (SELECT unnest(?) AS t)",
                         [pii.SQL_PREFILTER, holding]).fetchall()[0][0]
    assert len(holding) > 2000 and all(passed), [t for t, ok in zip(holding, passed) if not ok][:5]
    skipped = con.execute("SELECT count(*) FILTER (NOT regexp_matches(t, ?)) FROM (SELECT unnest(?) AS t)",
                          [pii.SQL_PREFILTER, texts]).fetchall()[0][0]
    assert skipped > 1000  # and it does skip texts


@pytest.mark.slow
def test_estimate_times_training_with_a_calibration_cached_per_machine_and_model(dirty, tiny_model_path):
    from duckdb_ft.ml import calibrate

    r = estimate(dirty, base=tiny_model_path)
    c = r["cost"]
    assert c["estimated_training_seconds"] > 0 and c["calibration"]["seconds_per_token"] > 0
    assert c["estimated_peak_memory_mib"] >= c["calibration"]["peak_rss_mib"] > 100  # a model was loaded and trained
    again = estimate(dirty, base=tiny_model_path)["cost"]
    assert again["calibration"]["cached"] and again["calibration"]["seconds_per_token"] == \
        c["calibration"]["seconds_per_token"]
    with open(calibrate._cache_file()) as f:
        assert any(tiny_model_path in key for key in json.load(f))


def test_a_query_that_fails_while_running_is_creates_error(dirty, tiny_model_path):
    q = "SELECT question AS prompt, CASE WHEN id = 60 THEN error('bad row') ELSE answer END AS completion FROM pairs"
    for call in ("SELECT finetune('ESTIMATE', ?, ?)", "SELECT finetune('CREATE', 'failing', ?, ?)"):
        with pytest.raises(duckdb.Error, match="reading the training data failed: .*bad row"):
            dirty.execute(call, [tiny_model_path, q]).fetchall()
    assert catalog_counts(dirty)["jobs"] == 0


@pytest.mark.slow
def test_a_role_estimates_only_what_it_may_read(tmp_path, tiny_model_path):
    import duckdb_ft

    path = str(tmp_path / "roles.duckdb")
    admin = duckdb_ft.connect(path)
    admin.execute("CREATE TABLE faq AS SELECT 'question ' || (i % 8) AS q, 'answer ' || (i % 8) AS a FROM range(12) t(i)")
    admin.execute("CREATE TABLE secret AS SELECT 'q' AS q, 'a' AS a")
    for sql in ("CREATE ROLE analyst", "GRANT ROLE analyst TO USER ann", "GRANT USAGE ON SCHEMA main TO ROLE analyst",
                "GRANT SELECT ON TABLE faq TO ROLE analyst"):
        admin.execute(sql)
    allow_base_model(admin, tiny_model_path)
    ann = duckdb_ft.connect(path, user="ann")
    query = "SELECT q AS prompt, a AS completion FROM {}"
    rows = ann.execute("SELECT count(*) FROM finetune_data_report(?, ?) WHERE finding = 'exact_duplicate'",
                       [tiny_model_path, query.format("faq")]).fetchall()
    assert rows == [(4,)]
    for call in ("SELECT finetune('ESTIMATE', ?, ?)", "FROM finetune_data_report(?, ?)"):
        with pytest.raises(duckdb.Error, match="(?i)privilege"):
            ann.execute(call, [tiny_model_path, query.format("secret")]).fetchall()
    ann.close()
    admin.close()
