"""The ``duckdb-ft`` command (thin: every subcommand calls the Python core)."""

from __future__ import annotations

import argparse
import sys
import time


def demo(args: argparse.Namespace) -> int:
    """COMPLETE over a small table with the default model."""
    import duckdb_ft

    con = duckdb_ft.connect(args.database)
    con.execute("""CREATE OR REPLACE TABLE questions AS SELECT * FROM (VALUES
        (1, 'What is the capital of France?'),
        (2, 'Name the largest planet in the solar system.'),
        (3, 'What language is spoken in Brazil?'),
        (4, 'How many days are in a leap year?')) t(id, question)""")
    print("duckdb-ft demo: COMPLETE over a table with smollm2-135m\n")
    print("SELECT id, question, complete('smollm2-135m', question) AS answer FROM questions;\n")
    start = time.perf_counter()
    rows = con.sql("SELECT id, question, complete('smollm2-135m', question, '{\"max_tokens\": 48}')::JSON->>"
                   "'$.choices[0].messages' AS answer FROM questions ORDER BY id").fetchall()
    for i, qn, answer in rows:
        print(f"{i}. {qn}\n   -> {answer}\n")
    print(f"{len(rows)} rows in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duckdb-ft", description="Fine-tune language models from SQL, in DuckDB.")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("demo", help="run the end-to-end demo")
    p.add_argument("--database", default=None, help="database file (default: in memory)")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
