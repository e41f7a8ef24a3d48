"""Splitting SQL text into statements at the semicolons that end them.

A semicolon ends a statement only outside quotes and comments: '...' strings ('' inside), E'...' strings
(backslash escapes), "..." identifiers, $$...$$ and $tag$...$tag$ strings, -- line comments and /* */ block
comments (nested, as in DuckDB). The shell uses this to know when a typed statement is complete.
"""

from __future__ import annotations

import re

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


def split(text: str) -> tuple[list[str], str]:
    """The complete statements of ``text`` (without their ``;``) and the incomplete rest.

    Statements holding only whitespace and comments are dropped.
    """
    statements, rest, _, _ = _scan(text)
    return statements, rest


def has_code(text: str) -> bool:
    """Whether ``text`` holds anything besides whitespace, comments and semicolons."""
    statements, _, code, _ = _scan(text)
    return bool(statements) or code


def is_complete(text: str) -> bool:
    """Whether ``text`` ends at the end of a statement (nothing but whitespace and comments after its ``;``)."""
    _, _, code, unterminated = _scan(text)
    return not code and not unterminated


def _scan(text: str) -> tuple[list[str], str, bool, bool]:
    """Statements, the rest, whether the rest has code, whether it ends inside a quote or comment."""
    statements: list[str] = []
    start, i, n = 0, 0, len(text)
    code = False  # has the current statement anything but whitespace and comments?
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and text.startswith("/*", i):
            i = _block_comment_end(text, i)
            continue
        if c == ";":
            if code:
                statements.append(text[start:i].strip())
            start, i, code = i + 1, i + 1, False
            continue
        if not c.isspace():
            code = True
        if c in "'\"":
            escapes = c == "'" and i > 0 and text[i - 1] in "eE" and (i < 2 or not _word(text[i - 2]))
            i = _quote_end(text, i, escapes)
            continue
        if c == "$" and (i == 0 or not _word(text[i - 1])):
            m = _DOLLAR.match(text, i)
            if m:
                j = text.find(m.group(0), m.end())
                i = n + 1 if j < 0 else j + len(m.group(0))
                continue
        i += 1
    return statements, text[start:], code, i > n


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _quote_end(text: str, i: int, escapes: bool) -> int:
    q, j, n = text[i], i + 1, len(text)
    while j < n:
        if escapes and text[j] == "\\":
            j += 2
            continue
        if text[j] == q:
            if j + 1 < n and text[j + 1] == q:
                j += 2
                continue
            return j + 1
        j += 1
    return n + 1  # unterminated: the statement is not complete


def _block_comment_end(text: str, i: int) -> int:
    depth, j, n = 0, i, len(text)
    while j < n:
        if text.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif text.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    return n + 1
