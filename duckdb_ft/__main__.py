"""``python -m duckdb_ft``: the ``duckdb-ft`` command."""

import sys

from .cli import main

sys.exit(main())
