"""The shell's dot commands: ``.tables``, ``.schema``, ``.read``, ``.mode``, ``.timer``, ``.wait``, ``.help``, ``.quit``.

Each takes the shell and its arguments; it prints what it has to say and returns False when it failed (or raises
:class:`CommandError` with the usage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from . import progress, render

if TYPE_CHECKING:
    from .repl import Shell


class Quit(Exception):
    """``.quit`` / ``.exit [CODE]``: leave the shell."""

    def __init__(self, code: int = 0):
        super().__init__(code)
        self.code = code


class CommandError(Exception):
    """A dot command was misused; the message says how to use it."""

# duckdb-ft's own catalog (jobs, models, ...) is not the user's: .tables and .schema leave it out.
_USER_OBJECTS = """
    SELECT schema_name, name, sql FROM (
        SELECT database_name, schema_name, table_name AS name, sql, temporary FROM duckdb_tables() WHERE NOT internal
        UNION ALL
        SELECT database_name, schema_name, view_name, sql, temporary FROM duckdb_views() WHERE NOT internal)
    WHERE schema_name <> 'duckdb_ft' AND (database_name = current_database() OR temporary)
      AND name ILIKE ? ORDER BY schema_name <> 'main', schema_name, name"""

HELP = [
    (".help", "Show this message"),
    (".mode [MODE]", f"Set the output mode: {', '.join(m for m in render.MODES if m != 'duckbox')}"),
    (".read FILE", "Run the statements of FILE (stops at its first error)"),
    (".schema [PATTERN]", "Show the CREATE statements of the tables and views (matching PATTERN)"),
    (".tables [PATTERN]", "List the tables and views (matching a LIKE PATTERN)"),
    (".timer on|off", "Print how long each statement took"),
    (".wait [JOB_ID]", "Watch a fine-tuning job (default: every job running here) until it finishes; Ctrl-C "
                       "stops watching, not the job"),
    (".quit, .exit [CODE]", "Leave the shell (Ctrl-D too)"),
]


def help_(shell: Shell, args: list[str]) -> None:
    width = max(len(name) for name, _ in HELP)
    for name, text in HELP:
        shell.print(f"{name.ljust(width)}  {text}")
    shell.print("\nStatements end with ';' and may span lines. Ctrl-C stops the running statement.")


def quit_(shell: Shell, args: list[str]) -> None:
    try:
        raise Quit(int(args[0]) if args else 0)
    except ValueError:
        raise CommandError(f"usage: .exit [CODE], where CODE is a number, not {args[0]!r}") from None


def mode(shell: Shell, args: list[str]) -> None:
    if not args:
        shell.print(f"current output mode: {shell.mode}")
        return
    name = args[0].lower()
    if name not in render.MODES or len(args) > 1:
        raise CommandError(f"unknown output mode {' '.join(args)!r}: use one of "
                           f"{', '.join(m for m in render.MODES if m != 'duckbox')}")
    shell.mode = "box" if name == "duckbox" else name


def timer(shell: Shell, args: list[str]) -> None:
    if len(args) != 1 or args[0].lower() not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
        raise CommandError("usage: .timer on|off")
    shell.timer = args[0].lower() in ("on", "1", "true", "yes")


def read(shell: Shell, args: list[str]) -> bool:
    if len(args) != 1:
        raise CommandError("usage: .read FILE")
    try:
        with open(args[0], encoding="utf-8") as f:
            return shell.run_script(f, bail=True)
    except OSError as e:
        raise CommandError(f"cannot open {args[0]!r}: {e.strerror}") from None


def _objects(shell: Shell, args: list[str], usage: str) -> list[tuple[str, str, str]]:
    if len(args) > 1:
        raise CommandError(usage)
    return shell.con.execute(_USER_OBJECTS, [args[0] if args else "%"]).fetchall()


def tables(shell: Shell, args: list[str]) -> None:
    names = [name if schema == "main" else f"{schema}.{name}"
             for schema, name, _ in _objects(shell, args, "usage: .tables [PATTERN]")]
    if not names:
        return
    # In columns, down then across, as DuckDB's shell lays them out.
    width = max(len(n) for n in names) + 2
    ncols = max(1, min(len(names), shell.width() // width))
    nrows = -(-len(names) // ncols)
    for r in range(nrows):
        shell.print("".join(names[c * nrows + r].ljust(width) for c in range(ncols)
                            if c * nrows + r < len(names)).rstrip())


def schema(shell: Shell, args: list[str]) -> None:
    for _, _, sql in _objects(shell, args, "usage: .schema [PATTERN]"):
        sql = sql.strip()
        shell.print(sql if sql.endswith(";") else sql + ";")


def wait(shell: Shell, args: list[str]) -> bool:
    if len(args) > 1:
        raise CommandError("usage: .wait [JOB_ID]")
    ids = args or progress.running_jobs(shell.con)
    if not ids:
        shell.print("No fine-tuning job is running.")
        return True
    ok = True
    for job_id in ids:
        try:
            status = progress.watch(shell.con, job_id, out=shell.out)
        except KeyboardInterrupt:
            shell.print(f"\nStopped watching {job_id}; the job goes on "
                        f"(SELECT finetune('CANCEL', '{job_id}') stops it).")
            return True
        ok = ok and status == "SUCCESS"
    return ok


#: Dot commands by name; a unique prefix of a name works too (``.tab``), as in DuckDB's shell.
COMMANDS: dict[str, Callable[[Shell, list[str]], object]] = {
    "help": help_, "mode": mode, "quit": quit_, "exit": quit_, "read": read, "schema": schema,
    "tables": tables, "timer": timer, "wait": wait,
}


def find(name: str) -> str:
    """The command ``name`` names: exactly, or as the one command it is a prefix of."""
    if name in COMMANDS:
        return name
    matches = [c for c in COMMANDS if c.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    raise CommandError(f'unknown command or invalid arguments: "{name}". Enter ".help" for help')
