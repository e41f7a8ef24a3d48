"""Rows per second over the PostgreSQL wire protocol (``duckdb-ft serve --pg-port``), and the server's memory.

A user streams ``rows`` rows of three columns (BIGINT, VARCHAR, DOUBLE) with psycopg's ``cursor.stream`` (text
format) from ``duckdb-ft serve``; the same query in-process through a user session is the reference. Prints
rows/s of each and the server's peak RSS (VmHWM).

    .venv/bin/python benchmarks/pgwire_stream.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

import duckdb_ft

QUERY = "SELECT i, 'row ' || i AS s, i * 1.5 AS x FROM range({rows}) t(i)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    rows = p.parse_args().rows
    folder = Path(tempfile.mkdtemp())
    db = str(folder / "bench.duckdb")
    con = duckdb_ft.connect(db)
    con.execute("CREATE USER reader PASSWORD = 'reader password'")
    con.close()
    user = duckdb_ft.connect(db, user="reader")
    started = time.perf_counter()
    n = len(user.execute(QUERY.format(rows=rows)).fetchall())
    local = n / (time.perf_counter() - started)
    user.close()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "duckdb_ft", "serve", db, "--port", str(free_port()),
                               "--pg-port", str(port)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                wire = psycopg.connect(host="127.0.0.1", port=port, user="reader", password="reader password",
                                       autocommit=True)
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        started = time.perf_counter()
        n = sum(1 for _ in wire.cursor().stream(QUERY.format(rows=rows)))
        remote = n / (time.perf_counter() - started)
        wire.close()
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    finally:
        server.terminate()
        server.wait(60)
    print(f"{rows} rows: in-process {local:,.0f} rows/s, over the wire {remote:,.0f} rows/s, "
          f"server peak RSS {int(peak) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
