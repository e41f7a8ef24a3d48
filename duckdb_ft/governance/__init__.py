"""Governance: who may do what.

- :mod:`.roles`: roles, their hierarchy, and the privilege checks of a session's current role (:class:`Checker`).
- :mod:`.reads`: what a plain DuckDB statement reads, writes and creates.
- :mod:`.authorize`: a non-administrator's plain SQL, authorized before DuckDB runs it; ownership of what it made.

Deny by default: a statement kind not named in :data:`authorize.USER_STATEMENTS` is for the administrator only.
"""
