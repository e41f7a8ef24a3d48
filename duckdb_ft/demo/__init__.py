"""``duckdb-ft demo``: fine-tune the default model for text-to-SQL over a small shop and show the gain.

    >>> from duckdb_ft import demo
    >>> demo.run("duckdb_ft_demo.duckdb")   # about 6 minutes on a 2-core CPU; returns an exit code

:mod:`.dataset` makes the tables and the question -> SQL pairs, :mod:`.scoring` scores answers by executing them,
:mod:`.runner` runs the steps as SQL on one database file.
"""

from __future__ import annotations

from .runner import DEFAULT_DATABASE, run

__all__ = ["run", "DEFAULT_DATABASE"]
