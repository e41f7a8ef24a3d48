"""The tools users already run, over the Python API: a DB-API 2.0 connection (dbapi.py) and the SQLAlchemy dialect
``duckdb_ft://`` on it (dialect.py, for pandas, jupysql and SQLAlchemy-based BI tools). The dbt-duckdb plugin is
``duckdb_ft.dbt``."""
