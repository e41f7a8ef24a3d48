"""Data preparation before training: what CREATE copies, what would hurt the model, and cleaning at CREATE.

- :mod:`.stage`: the staged snapshot (a temporary table) that CREATE stores and ESTIMATE reports on.
- :mod:`.duplicates`: exact duplicates, conflicting prompts and near-duplicate prompts (MinHash LSH), in SQL.
- :mod:`.pii`: personal data (e-mail, phone, Luhn-valid cards, IBANs, IP addresses) found and masked.
- :mod:`.clean`: the findings table, and the options ``dedupe``, ``pii`` and ``drop_conflicting`` applied.
- :mod:`.scratch`: ESTIMATE's private scratch database (its own memory limit and spill directory).
- :mod:`.report`: FINETUNE 'ESTIMATE''s report: rows, tokens, duplicates, leaks, personal data, cost, warnings.

Ranked below ``jobs`` (which calls it) and above ``ml`` and ``catalog``; no torch here (tokenizing is ``ml``'s).
"""
