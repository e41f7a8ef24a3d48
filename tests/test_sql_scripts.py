"""Every script in sql/ runs through the shell's script mode (`duckdb-ft DB < script.sql`), so the docs never rot.

Scripts use the default model, smollm2-135m; here they run on the tiny test model instead (the model name is
replaced in the text), which keeps them to seconds: they check that the walk-through works, not what it learns.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SQL = Path(__file__).resolve().parent.parent / "sql"

#: What each script's output must show, beyond a clean exit (scripts not listed: a clean exit is enough).
EXPECTED = {
    "aisql.sql": [
        r'│ \{"food_quality": "(positive|negative|neutral)", "food_taste": "(positive|negative|neutral)", '
        r'"wait_time": "(positive|negative|neutral)", "food_cost": "(positive|negative|neutral)"\} │',  # response_format
        r'\{"completion_tokens":16,"prompt_tokens":\d+,"total_tokens":\d+\}',          # show_details' usage
        r'│ \{"labels": \["(travel|cooking)"\]\} +│',                                   # one of the categories
        r'│ France +│ (North America|Europe|Asia) +│',                                # a label per row
        r'│ answer  │\n│ boolean │',                                                   # AI_FILTER is a BOOLEAN
        r'│ AI_AGG +│ +3 │', r'│ AI_CLASSIFY +│ +6 │', r'│ AI_COMPLETE +│ +4 │',        # usage under each name
        r'│ AI_FILTER +│ +7 │', r'│ AI_SUMMARIZE_AGG +│ +1 │',
    ],
    "prepare.sql": [
        r"│ 12 +│ 1 +│ 1 +│ 1 +│ 1 +│ 1 +│ \d+ +│",             # ESTIMATE: returned, skipped, exact, conflicting, near, truncated
        r"│ CARD +│ 1 +│ \[6\] +│", r"│ EMAIL +│ 1 +│ \[7\] +│",  # personal data with the rows
        r"│ +2 │ exact_duplicate +│", r"│ +3 │ near_duplicate +│", r"│ +12 │ skipped +│",  # finetune_data_report
        r"train_rows = 7",                                      # DESCRIBE after cleaning
        r'"dropped":\{"exact_duplicate":1,"conflicting":2,"near_duplicate":1\},"masked":\{"CARD":1,"EMAIL":1\}',
        r"│ My card <CARD> was charged twice +│", r"│ Please e-mail the invoice to <EMAIL> +│",  # the snapshot
        r"│ +12 │",                                             # the tickets table unchanged
    ],
    "quickstart.sql": [
        r"│ true +│",                                          # CREATE returned a job id
        r"ft_[0-9a-f-]{36} SUCCESS in \d+:\d\d:\d\d: model main\.faq_bot",  # .wait's summary
        r"│ SUCCESS │",                                       # WAIT
        r"status = SUCCESS", r"model = main\.faq_bot", r"train_rows = 8", r"total_steps = 10",  # DESCRIBE
        r"│ +10 │ +10\.0 │",                                  # the history's last step
        r"│ Do you ship abroad\? +│",                         # COMPLETE with the new model
    ],
    "evaluate.sql": [
        r"SUCCESS in \d+:\d\d:\d\d: model main\.faq_a", r"SUCCESS in \d+:\d\d:\d\d: model main\.faq_b",  # .wait
        r"│ evaluated │\n(.*\n){2}│ true +│",                    # EVALUATE returned an evaluation id
        r"│ SUCCESS │ \[.*, faq_a, faq_b\] │ +6 │",              # finetune_evaluations()
        r"│ faq_a +│ +6 │", r"│ faq_b +│ +6 │",                 # per-model rows of finetune_evaluation(id)
        r"│ faq_a +│ faq_b +│ completion_loss +│",             # finetune_comparison(id): the A/B pair
        r"\{\"exact_match\":",                                  # the summary JSON
    ],
    "lifecycle.sql": [
        r"SUCCESS in \d+:\d\d:\d\d: model main\.faq_bot \(", r"│ created_v2 │\n(.*\n){2}│ true +│",
        r"│ v1 +│ false +│ NULL +│", r"│ v2 +│ true +│ main\.faq_bo",                  # SHOW VERSIONS
        r"Default version of model main\.faq_bot set to v1\.",                      # the roll back
        r"│ main +│ faq_bot +│ v1 +│ true +│",                                      # DESCRIBE MODEL faq_bot
        r"│ COMPLETE +│ main\.faq_bot +│ v1 +│ admin +│ +1 │ +1 │ true +│",          # finetune_usage()
        r"│ COMPLETE +│ main\.faq_bot +│ v2 +│ admin +│ +1 │ +1 │ true +│",
        r"│ FINETUNE +│ main\.faq_bot +│ v2 +│ admin +│ +1 │ +2 │ false +│ true +│",
        r"Version v2 of model main\.faq_bot successfully dropped\.",
    ],
    "preferences.sql": [
        r"│ test +│ +12 │", r"│ train +│ +36 │",                                  # the feedback table's splits
        r"SUCCESS in \d+:\d\d:\d\d: model main\.polite_sft", r"SUCCESS in \d+:\d\d:\d\d: model main\.polite_dpo",
        r"│ step +│ +loss +│ +chosen +│ +rejected +│ +accuracy +│ +margin +│",      # DPO's last steps, TRL's rewards
        r"│ polite_dpo +│ +12 │",                                               # EVALUATE's rows per model
        r"│ polite_sft +│ polite_dpo +│ preference_accuracy │",                 # finetune_comparison(id)
    ],
    "sweep.sql": [
        r"│ true +│",                                          # SWEEP returned a sweep id
        *[rf"SUCCESS in \d+:\d\d:\d\d: model main\.faq_sweep_{k}" for k in range(1, 5)],  # .wait, every job
        r"│ +1 │ main\.faq_sweep_\d │ SUCCESS │ \{\"learning_rate\":",  # the ranking, best first
        r"│ +4 │ main\.faq_sweep_\d │ SUCCESS │",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SQL.glob("*.sql")), ids=lambda p: p.name)
def test_sql_script_runs_in_the_shell(script, sql_script_run):
    r = sql_script_run(script.name)  # (conftest: tests/test_privileges.py reads the privileges.sql run too)
    assert r["returncode"] == 0, r["stdout"] + r["stderr"]
    assert "Error" not in r["stderr"] and "Traceback" not in r["stderr"], r["stderr"]
    for pattern in EXPECTED.get(script.name, []):
        assert re.search(pattern, r["stdout"]), f"{pattern!r} not in:\n{r['stdout']}"


def test_every_script_has_a_header_saying_how_to_run_it():
    for script in SQL.glob("*.sql"):
        assert "duckdb-ft" in script.read_text().split("\n\n")[0], script.name
