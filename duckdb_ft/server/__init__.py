"""``duckdb-ft serve``: one process owns a database file and serves it over HTTP.

Rooms of the server (imports flow down this list): ``run.py`` (open the database, uvicorn, signals, grace,
close), ``app.py`` (the FastAPI application: routes, middleware, errors), ``openai_api.py`` (the
OpenAI-compatible ``/v1`` API), ``sql_api.py`` (``/api/v2/statements``, Snowflake's SQL API), ``generation.py``
(one request's completion through COMPLETE's surface path), ``streaming.py`` (OpenAI's response and chunk shapes),
``monitoring.py`` (Prometheus metrics, the access log), ``bounds.py`` (body size, prompt length, the request
queue), ``context.py`` (the server's state, the caller, blocking work off the event loop), ``auth.py`` (a Bearer
token to a Session). The server has no privilege logic of its own: every request is a
:class:`~duckdb_ft.surface.engine.Session` of the token's user, through the same surface functions and authorizer
as SQL.
"""
