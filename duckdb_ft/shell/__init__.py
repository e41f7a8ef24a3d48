"""The ``duckdb-ft`` shell: UI only, over :func:`duckdb_ft.connect` and :func:`duckdb_ft.execute`.

- :mod:`.repl`: the interactive shell and script mode; :mod:`.commands` its dot commands.
- :mod:`.sqltext`: splitting SQL text into statements; :mod:`.render`: the output modes; :mod:`.progress`: watching
  a job.
"""
