"""Evaluation: ``finetune('EVALUATE', models, query [, options])`` and what it stores.

- :mod:`.evaluate`: the checks, the generation with every model on the same rows, the scoring, the summary.
- :mod:`.metrics`: per-row and corpus metrics (sacrebleu for BLEU and chrF, rouge-score for ROUGE-L).
- :mod:`.significance`: paired comparison: wins/ties/losses, paired bootstrap intervals, McNemar's test.
- :mod:`.sqlmatch`: ``sql_match``, execution match of predicted SQL in a sandbox.
- :mod:`.usermetrics`: user metrics, SQL expressions evaluated by DuckDB under the caller's privileges.
- :mod:`.retention`: forgetting, a fine-tuned model against its base on a general prompt set made by code.
- :mod:`.results`, :mod:`.shapes`: reading evaluations back (SHOW, DESCRIBE, per-row results) and their shapes.
"""
