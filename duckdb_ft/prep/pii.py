"""Personal data in text: e-mail addresses, phone numbers, payment-card numbers (Luhn-valid), IBANs (mod-97 valid)
and IP addresses (v4 and v6), found by regular expressions with a checksum or a parse where the kind has one.

Kinds are searched in a fixed order (EMAIL, IBAN, CARD, IP, PHONE) and a later kind never claims characters an
earlier one matched, so ``+44 20 7946 0958`` inside an IBAN is not also a phone, and every value has one kind.
:func:`mask` replaces each value by its placeholder (``<EMAIL>``, ...).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable

KINDS = ("EMAIL", "IBAN", "CARD", "IP", "PHONE")

#: A DuckDB (RE2) pre-filter, run over every row in parallel: each alternative is a text that every match of one
#: kind's pattern below contains (``\p{Nd}`` is what Python's ``\d`` matches), so a text that does not match it
#: holds no personal data and is not searched in Python. Alternatives: EMAIL, IBAN, CARD, IPv4, IPv6, PHONE (whose
#: every match has two digits, a separator and two digits, or a ``+`` and seven digits).
SQL_PREFILTER = "|".join((
    r"[A-Za-z0-9._%+-]@[A-Za-z0-9]",
    r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11}",
    r"\p{Nd}(?:[ -]?\p{Nd}){12}",
    r"\p{Nd}\.\p{Nd}{1,3}\.\p{Nd}{1,3}\.\p{Nd}",
    r":[0-9A-Fa-f]{0,4}:",
    r"\p{Nd}{2}[ .-]\p{Nd}{2}|\+\p{Nd}{7}",
))

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,24}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,5}){1,4}(?![\w-])"
                    r"|(?<![\w+])\+\d{7,15}(?!\w)")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string (payment cards)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    """ISO 13616 check: the country and check digits moved to the end, letters as 10..35, mod 97 == 1."""
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _card(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group())
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits)


def _ip(m: re.Match) -> bool:
    try:
        ipaddress.ip_address(m.group())
    except ValueError:
        return False
    return True


def _phone(m: re.Match) -> bool:
    text = m.group()
    digits = sum(ch.isdigit() for ch in text)
    if not 7 <= digits <= 15 or _DATE.fullmatch(text):
        return False
    return text.startswith("+") or text.startswith("(") or bool(re.search(r"\d[ .-]\d", text)) and digits >= 9


_FINDERS: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None]] = [
    ("EMAIL", _EMAIL, None),
    ("IBAN", _IBAN, lambda m: iban_ok(m.group())),
    ("CARD", _CARD, _card),
    ("IP", _IPV4, _ip),
    ("IP", _IPV6, lambda m: m.group().count(":") >= 2 and _ip(m)),
    ("PHONE", _PHONE, _phone),
]


def find(text: str | None) -> list[tuple[str, int, int]]:
    """The personal data in ``text``: (kind, start, end) of each value, in the order of the text."""
    if not text:
        return []
    found: list[tuple[str, int, int]] = []
    for kind, pattern, valid in _FINDERS:
        for m in pattern.finditer(text):
            s, e = m.span()
            if any(s < e2 and s2 < e for _, s2, e2 in found):
                continue
            if valid is None or valid(m):
                found.append((kind, s, e))
    return sorted(found, key=lambda f: f[1])


def mask(text: str, found: list[tuple[str, int, int]] | None = None) -> str:
    """``text`` with each personal value replaced by ``<KIND>``."""
    found = find(text) if found is None else found
    out, at = [], 0
    for kind, s, e in found:
        out.append(text[at:s])
        out.append(f"<{kind}>")
        at = e
    out.append(text[at:])
    return "".join(out)
