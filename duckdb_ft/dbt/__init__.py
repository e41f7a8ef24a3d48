"""duckdb-ft for dbt: the dbt-duckdb plugin ``duckdb_ft.dbt`` and, in this folder, the dbt package ``duckdb_ft``.

In ``profiles.yml`` (``type: duckdb``)::

    plugins:
      - module: duckdb_ft.dbt
        config: {user: alice, resume_jobs: false}     # both optional: no user is the database administrator

installs duckdb-ft on dbt's connection; dbt-duckdb runs every model on a cursor of it, and each cursor has the
functions as the same user (``duckdb_ft.surface.cursors``). The dbt package (this folder: ``dbt_project.yml`` and
``macros/``; ``packages.yml``: ``- local: <PACKAGE>``) has the materializations ``finetune`` (each ``dbt run`` adds a
version of a fine-tuned model trained on the model's SELECT, waits, and records the job) and ``evaluation`` (EVALUATE
on the model's SELECT, one row per model and metric), the generic test ``metric_at_least``, and the macro
``duckdb_ft.statement('GRANT ...')`` for hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin

from ..errors import InvalidArgument

#: The dbt package's folder, for ``packages.yml`` (``- local: ...``).
PACKAGE = str(Path(__file__).resolve().parent)

#: The plugin's options in ``profiles.yml``.
OPTIONS = ("user", "resume_jobs")


class Plugin(BasePlugin):
    """dbt-duckdb's plugin hook: duckdb-ft installed on the connection dbt opens."""

    def initialize(self, plugin_config: dict[str, Any]) -> None:
        unknown = sorted(set(plugin_config) - set(OPTIONS))
        if unknown:
            raise InvalidArgument(f"duckdb_ft.dbt plugin: unknown option(s) {', '.join(unknown)}; the options are "
                                  f"{', '.join(OPTIONS)}")
        self.user = plugin_config.get("user") or None
        resume = plugin_config.get("resume_jobs", False)
        if not isinstance(resume, bool):
            raise InvalidArgument(f"duckdb_ft.dbt plugin: resume_jobs is {resume!r}: use true or false")
        self.resume_jobs = resume

    def configure_connection(self, conn: Any) -> None:
        import duckdb_ft

        duckdb_ft.install(conn, user=self.user, resume_jobs=self.resume_jobs)
