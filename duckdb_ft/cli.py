"""The ``duckdb-ft`` command: a SQL shell like ``duckdb``'s, and ``duckdb-ft demo``.

    duckdb-ft [DATABASE | --server URL] [-c SQL] [-f FILE] [-bail] [--wait [JOB_ID]] [-box|-csv|-json|-line|-markdown|-list]
    duckdb-ft demo [DATABASE]
    duckdb-ft token DATABASE [--user admin] [--days N] [--name NAME]
    duckdb-ft serve DATABASE [--host 127.0.0.1] [--port 8000] [--pg-port 5433] [--grace 10] [--ssl-keyfile K --ssl-certfile C]

With ``-c`` or ``-f`` it runs that and exits; with a script on standard input (``duckdb-ft db.duckdb < script.sql``)
it runs the script; in a terminal it is interactive. A first argument ``demo`` is the subcommand: open a database
file named ``demo`` as ``./demo``. Thin: the shell is :mod:`duckdb_ft.shell`; the demo is :mod:`duckdb_ft.demo`;
the server is :mod:`duckdb_ft.server` (``--server URL``: the shell as its client, :mod:`duckdb_ft.shell.remote`).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings


def _shell_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="duckdb-ft", description="Fine-tune language models from SQL, in DuckDB: an interactive SQL shell.",
        epilog="Subcommands: 'duckdb-ft demo [DATABASE]' runs the demo (a database file named 'demo' is './demo'). "
               "A script on standard input runs to its end and exits 1 if a statement failed (-bail: stop there).")
    p.add_argument("database", nargs="?", default=None, help="database file (default: a transient in-memory one)")
    p.add_argument("-c", dest="command", metavar="SQL", help="run SQL (or one dot command) and exit")
    p.add_argument("-f", dest="file", metavar="FILE", help="run the statements of FILE and exit")
    p.add_argument("-bail", "--bail", action="store_true", help="stop a script at its first error")
    p.add_argument("--wait", nargs="?", const="", default=None, metavar="JOB_ID",
                   help="watch a fine-tuning job (default: every job still running after the commands) until it "
                        "finishes, with a live progress bar in a terminal")
    p.add_argument("--server", metavar="URL", help="run against a duckdb-ft server (duckdb-ft serve) instead of a "
                                                   "file, as the user of the token in $DUCKDB_FT_TOKEN")
    p.add_argument("-readonly", "--readonly", action="store_true", help="open the database read-only")
    p.add_argument("--history", metavar="FILE", help="history file (default: $DUCKDB_FT_HISTORY or "
                                                     "~/.duckdb_ft_history)")
    from .shell.render import MODES

    for m in MODES:
        p.add_argument(f"-{m}", dest="mode", action="store_const", const=m, help=f"set the output mode to {m}")
    p.add_argument("-version", "--version", action="store_true", help="print the versions and exit")
    return p


def shell(argv: list[str]) -> int:
    args = _shell_parser().parse_args(argv)
    # Library deprecation notices (transformers, peft) say nothing a shell user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for stream in (sys.stdout, sys.stderr):  # a value the terminal cannot show is replaced, never a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    import duckdb

    import duckdb_ft

    from .shell.commands import Quit
    from .shell.repl import Shell, error_message

    if args.version:
        print(f"duckdb-ft {duckdb_ft.__version__} (DuckDB {duckdb.__version__})")
        return 0
    if args.wait and args.database is None and not args.wait.startswith("ft_"):
        args.database, args.wait = args.wait, ""  # `duckdb-ft --wait shop.duckdb`
    if args.server is not None:
        con = _remote(args)
        if con is None:
            return 1
    else:
        try:
            con = duckdb_ft.connect(args.database, read_only=args.readonly)
        except Exception as e:  # noqa: BLE001 - one message, no traceback
            print(f'Error: unable to open database "{args.database}": {str(e).strip()}', file=sys.stderr)
            return 1
    sh = Shell(con, mode=args.mode or "box")
    ok = True
    try:
        if args.command is not None:
            ok = sh.run_script(args.command.splitlines(keepends=True) or [""], bail=True)
        elif args.file is not None:
            ok = sh.run_command(f".read {_quote(args.file)}")
        elif not sys.stdin.isatty():
            ok = sh.run_script(sys.stdin, bail=args.bail)
        elif args.wait is None:
            print(f"duckdb-ft {duckdb_ft.__version__} (DuckDB {duckdb.__version__})\n"
                  'Enter ".help" for usage hints, ".quit" or Ctrl-D to leave.')
            print(f"Connected to {args.server}." if args.server else f"Connected to {args.database}."
                  if args.database else "Connected to a transient in-memory database.")
            return sh.repl(args.history)
        if args.wait is not None and (ok or not args.bail) and not sh.interrupted:
            ok = sh.run_command(f".wait {_quote(args.wait)}" if args.wait else ".wait") and ok
    except Quit as q:
        return q.code
    if sh.interrupted:
        return 130
    return 0 if ok else 1


def _remote(args: argparse.Namespace) -> object | None:
    """The shell's connection to ``--server URL`` (token from $DUCKDB_FT_TOKEN), checked with one statement; None
    after saying what is wrong."""
    from .shell.remote import TOKEN_VARIABLE, Remote
    from .shell.repl import error_message

    if args.database is not None:
        print("Error: give a database file or --server URL, not both", file=sys.stderr)
        return None
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        print(f"Error: --server needs a token in ${TOKEN_VARIABLE} (the administrator mints one with "
              "`duckdb-ft token DB`)", file=sys.stderr)
        return None
    con = Remote(args.server, token)
    try:
        con.sql("SELECT 1")
    except Exception as e:  # noqa: BLE001 - one message, no traceback
        print(error_message(e), file=sys.stderr)
        return None
    return con


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="duckdb-ft demo", description="Run the end-to-end demo.")
    p.add_argument("database", nargs="?", default=None, help="database file (default: in memory)")
    p.add_argument("--database", dest="database_opt", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    database = args.database or args.database_opt
    from .demo import run

    return run(database)


def export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="duckdb-ft export",
                                description="Write a fine-tuned model out of the database: a PEFT adapter folder "
                                            "(PeftModel.from_pretrained(base, FOLDER)), a merged Hugging Face "
                                            "folder (AutoModelForCausalLM.from_pretrained(FOLDER)), or a GGUF "
                                            "file (llama.cpp, Ollama), or the adapter alone as a GGUF file.")
    p.add_argument("database", help="database file holding the model")
    p.add_argument("model", help="model name (name or schema.name; name@version for a version), or a base model "
                                 "(smollm2-135m, a registered one) for merged or gguf")
    p.add_argument("folder", nargs="?", default=None,
                   help="folder to create (new or empty); for gguf, a path ending in .gguf is the file; optional "
                        "with --push-to-hub")
    p.add_argument("--format", default="adapter",
                   help="adapter (default), merged, gguf, or gguf-lora (the adapter alone as a GGUF file for "
                        "llama.cpp's --lora and Ollama's ADAPTER); gguf ones get an Ollama Modelfile beside them; "
                        "dataset: MODEL is a job id (its training snapshot) or a SELECT, saved as a Hugging Face "
                        "dataset folder")
    p.add_argument("--dtype", default="f32", help="weights of merged, gguf and gguf-lora: f32 (default) or f16")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None,
                   help="also upload the exported folder to this Hugging Face Hub repository (user/name; token "
                        "from HF_TOKEN; created private if new)")
    p.add_argument("--public", action="store_true", help="with --push-to-hub: create the repository public")
    args = p.parse_args(argv)
    if args.folder is None and args.push_to_hub is None:
        p.error("give a FOLDER to export into, or --push-to-hub REPO_ID")
    import duckdb_ft

    from .shell.repl import error_message

    con = None
    try:
        con = _open_for_export(args.database)
        if args.format == "dataset":
            path = duckdb_ft.export_dataset(con, args.model, args.folder, push_to_hub=args.push_to_hub,
                                            private=not args.public)
        else:
            path = duckdb_ft.export_model(con, args.model, args.folder, format=args.format, dtype=args.dtype,
                                          push_to_hub=args.push_to_hub, private=not args.public)
    except Exception as e:  # noqa: BLE001 - one message, no traceback
        _error(error_message(e))
        return 1
    finally:
        if con is not None:
            con.close()  # checkpointed: no write-ahead log left beside the file
    if args.push_to_hub:
        where = f" to {args.folder} and" if args.folder else ""
        print(f"Exported {args.model} ({args.format}){where} pushed it to {path}")
    else:
        print(f"Exported {args.model} ({args.format}) to {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors start with the one ``Error:`` of the command's other failures (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"Error: {message}\n")


def token(argv: list[str]) -> int:
    p = _Parser(prog="duckdb-ft token",
                                description="Mint a programmatic access token (for `duckdb-ft serve`) while no "
                                            "server holds the database file; print only the token on stdout. "
                                            "User admin, the administrator, is created if it does not exist.")
    p.add_argument("database", help="database file")
    p.add_argument("--user", default="admin", help="the token's user (default: admin, the administrator)")
    p.add_argument("--days", type=int, default=None, help="days until it expires (default 15, at most 365)")
    p.add_argument("--name", default=None, help="the token's name (default: cli_<UTC date>_<time>)")
    args = p.parse_args(argv)
    import duckdb

    from .catalog import migrations, transaction
    from .errors import FtError
    from .governance.credentials import first_token

    try:
        con = duckdb.connect(args.database)
    except duckdb.IOException as e:
        held = "lock" in str(e).lower()
        print(f"Error: database file {args.database} is open in another process (a running duckdb-ft serve?): "
              "stop it, or mint a token through it with ALTER USER admin ADD PROGRAMMATIC ACCESS TOKEN name"
              if held else f"Error: unable to open database {args.database}: {e}", file=sys.stderr)
        return 2
    try:
        cur = con.cursor()
        migrations.migrate(cur)
        with transaction(cur):
            secret, name = first_token(cur, args.user, days=args.days, name=args.name)
    except Exception as e:  # noqa: BLE001 - one message, no traceback
        _error(str(e) if isinstance(e, FtError) else f"{type(e).__name__}: {e}")
        return 2
    finally:
        con.close()
    print(f"Programmatic access token {name} of user {args.user} (ALTER USER {args.user} REMOVE PROGRAMMATIC "
          f"ACCESS TOKEN {name} revokes it):", file=sys.stderr)
    print(secret)
    return 0


def _error(message: str) -> None:
    """A subcommand's failure on standard error, with one ``Error:`` in front."""
    print(message if message.startswith("Error:") else f"Error: {message}", file=sys.stderr)


def serve(argv: list[str]) -> int:
    from .server.bounds import MAX_BODY_BYTES, MAX_PROMPT_CHARS, MAX_QUEUE, REQUEST_TIMEOUT

    p = argparse.ArgumentParser(prog="duckdb-ft serve",
                                description="Serve a database over HTTP: the OpenAI-compatible /v1 API, SQL over "
                                            "/api/v2/statements, /metrics and /health. Every request needs "
                                            "'Authorization: Bearer <token>' (duckdb-ft token DB mints one).")
    p.add_argument("database", help="database file (the server holds it: no other process can open it meanwhile)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                       "only; 0.0.0.0 exposes the server to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds that SIGTERM/SIGINT leave requests in flight "
                                                             "before they are cut (default 10)")
    p.add_argument("--ssl-keyfile", help="TLS private key (with --ssl-certfile: serve https)")
    p.add_argument("--ssl-certfile", help="TLS certificate chain")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="largest request body (default "
                                                                              f"{MAX_BODY_BYTES}; larger: 413)")
    p.add_argument("--max-prompt-chars", type=int, default=MAX_PROMPT_CHARS,
                   help=f"longest prompt in characters (default {MAX_PROMPT_CHARS}; longer: 400)")
    p.add_argument("--max-queue", type=int, default=MAX_QUEUE,
                   help=f"generation requests waiting or running at most (default {MAX_QUEUE}; more: 429)")
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT,
                   help=f"seconds a generation request may take, waiting included (default {REQUEST_TIMEOUT:g}; "
                        "longer: 504)")
    p.add_argument("--pg-port", type=int, help="also speak the PostgreSQL wire protocol on this port, on --host "
                                               "(psql, JDBC, SQLAlchemy; off unless given; needs the pg extra)")
    args = p.parse_args(argv)
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        p.error("--ssl-keyfile and --ssl-certfile go together")
    import duckdb_ft

    from .server.run import Settings, serve as run_server

    try:
        con = duckdb_ft.connect(args.database, resume_jobs=True)
    except Exception as e:  # noqa: BLE001 - one message, no traceback
        print(f'Error: unable to open database "{args.database}": {str(e).strip()}', file=sys.stderr)
        return 1
    return run_server(Settings(args.database, args.host, args.port, args.grace, args.ssl_keyfile, args.ssl_certfile,
                               args.max_body_bytes, args.max_prompt_chars, args.max_queue,
                               request_timeout=args.request_timeout, pg_port=args.pg_port), con)


def _open_for_export(database: str):
    """The database, read-write when it may be (closing it then checkpoints any write-ahead log another tool left),
    else read-only (a file this user cannot write)."""
    import duckdb_ft

    if not os.path.isfile(database):
        raise duckdb_ft.NotFound(f"database file {database} does not exist")
    if os.access(database, os.W_OK) and os.access(os.path.dirname(os.path.abspath(database)), os.W_OK):
        return duckdb_ft.connect(database)
    return duckdb_ft.connect(database, read_only=True)


#: Subcommands by name: a first argument with one of these names is the subcommand, never a database file.
SUBCOMMANDS = {"demo": demo, "export": export, "token": token, "serve": serve}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return SUBCOMMANDS[argv[0]](argv[1:])
        return shell(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `duckdb-ft -c ... | head`: stop quietly, as `duckdb` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
