"""Fine-tuning jobs: CREATE's checks and snapshot (:mod:`.create`), the queue and its worker thread
(:mod:`.runner`), one job's run (:mod:`.worker`), and the JSON shapes of SHOW / DESCRIBE / history
(:mod:`.shapes`). Training itself is :mod:`duckdb_ft.ml.training`; this package only drives it.
"""
