"""Who is calling: passwords and programmatic access tokens checked against the catalog, an :class:`Identity`.

Every door that authenticates (the HTTP server, a wire protocol) calls :func:`authenticate_token` or
:func:`authenticate_password` and opens ``Engine.new_session(identity.user, role=identity.role)``.

- A token is ``dft_<id>_<secret>``: the id is public and finds the token's row without a scan; the secret is
  stored only as an scrypt hash with a salt of its own and compared in constant time. A password is stored the
  same way. Each call reads the catalog, so a removed token, a dropped user or a revoked role fails at once.
- Every failure raises :class:`AuthenticationFailed` with one message, and takes the same work (an unknown id or
  user is checked against a dummy hash), so nothing tells a wrong secret from an unknown user.
- Failed attempts are slowed per user and per client address (:class:`Backoff`): a call waits, before it checks
  anything, ``base * 2**(n-1)`` seconds (capped) after ``n`` recent failures of its user or its client.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from ..catalog import access as accessdb, now_ms, users as usersdb
from ..errors import AlreadyExists, AuthenticationFailed, InvalidArgument, NotFound
from .roles import ADMIN, is_granted

TOKEN_PREFIX = "dft_"
#: Snowflake's programmatic access tokens: 15 days unless DAYS_TO_EXPIRY says otherwise, at most 365, 15 a user.
DEFAULT_DAYS, MAX_DAYS, MAX_TOKENS_PER_USER = 15, 365, 15
#: scrypt's cost: about 16 MiB and 30-90 ms a hash on a CPU core; stored with each hash, so it may change later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_TOKEN = re.compile(rf"{TOKEN_PREFIX}([0-9a-f]{{16}})_([A-Za-z0-9_-]{{20,100}})")
_MAX_NAME = 255
#: The longest password (or token) checked: a longer one fails without being hashed.
MAX_SECRET = 1024


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: ``role`` is the token's ROLE_RESTRICTION, or None for the user's default role."""

    user: str
    role: str | None


# ------------------------------------------------------------------------------------------------------- hashing


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$<salt hex>$<hash hex>``: a new salt each time."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` hashes to ``stored`` (compared in constant time); False for a malformed ``stored``."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        expected = bytes.fromhex(digest)
        actual = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected), maxmem=2**26)
    except (ValueError, TypeError):
        return False
    return kind == "scrypt" and hmac.compare_digest(actual, expected)


@functools.cache
def _dummy_hash() -> str:
    """A hash no secret matches in practice: what an unknown user's or token's attempt is checked against."""
    return hash_secret(secrets.token_urlsafe(32))


# ------------------------------------------------------------------------------------------------------ back-off


class Backoff:
    """Recent failed attempts, by user and by client address, in a bounded LRU (``size`` keys; a key's count is
    forgotten ``window`` seconds after its last failure). A successful login resets its user's count, not its
    client's (an address that knows one password must not reset its guesses at others')."""

    def __init__(self, base: float = 0.05, cap: float = 5.0, size: int = 4096, window: float = 900.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.base, self.cap, self.size, self.window = base, cap, size, window
        self._sleep, self._clock = sleep, clock
        self._failures: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _keys(user: str, client: str) -> list[tuple[str, str]]:
        keys = [("user", user[:_MAX_NAME])]
        return keys + [("client", client[:_MAX_NAME])] if client else keys

    def failures(self, user: str, client: str = "") -> int:
        """The recent failures of ``user`` or of ``client``, whichever has more."""
        now = self._clock()
        with self._lock:
            counts = [c for c, last in (self._failures.get(k, (0, now)) for k in self._keys(user, client))
                      if now - last <= self.window]
        return max(counts, default=0)

    def delay(self, user: str, client: str = "") -> float:
        n = self.failures(user, client)
        return 0.0 if n == 0 else min(self.cap, self.base * 2 ** (n - 1))

    def wait(self, user: str, client: str = "") -> None:
        delay = self.delay(user, client)
        if delay > 0:
            self._sleep(delay)

    def failed(self, user: str, client: str = "") -> None:
        now = self._clock()
        with self._lock:
            for key in self._keys(user, client):
                count, last = self._failures.pop(key, (0, now))
                self._failures[key] = (count + 1 if now - last <= self.window else 1, now)
            while len(self._failures) > self.size:
                self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(("user", user[:_MAX_NAME]), None)


#: The process's back-off (tests put a quicker one in its place).
BACKOFF = Backoff()


# ------------------------------------------------------------------------------------------- verified tokens

#: Tokens scrypt verified lately, by the SHA-256 of their text (never the text), each with the stored hash it
#: matched: a server checks the same token on every request, and scrypt's 30-90 ms each would cap its rate. The
#: catalog row is still read on every call (so a removed, expired or re-minted token fails at once); only the
#: scrypt of a token that matched this very row before is skipped. A token has 256 random bits: its SHA-256
#: tells nothing. At most MAX_VERIFIED entries, the least recently used dropped first.
MAX_VERIFIED = 4096
_VERIFIED: OrderedDict[bytes, str] = OrderedDict()
_verified_lock = threading.Lock()


def _verified(digest: bytes, stored: str) -> bool:
    with _verified_lock:
        known = _VERIFIED.get(digest)
        if known is not None:
            _VERIFIED.move_to_end(digest)
    return known is not None and hmac.compare_digest(known, stored)


def _remember(digest: bytes, stored: str) -> None:
    with _verified_lock:
        _VERIFIED[digest] = stored
        _VERIFIED.move_to_end(digest)
        while len(_VERIFIED) > MAX_VERIFIED:
            _VERIFIED.popitem(last=False)


# ------------------------------------------------------------------------------------------------ authentication


def authenticate_token(cursor: Any, secret: str, *, client: str = "") -> Identity:
    """The identity an access token stands for.

    Raises:
        AuthenticationFailed: the token is malformed, unknown, wrong, expired or removed, its user dropped, or
            its role restriction no longer granted to its user (one message for all).
    """
    m = _TOKEN.fullmatch(secret) if isinstance(secret, str) else None
    token_id, rest = (m.group(1), m.group(2)) if m else ("", "")
    row = usersdb.token_by_id(cursor, token_id) if m else None
    who = row["user_name"] if row else f"token:{token_id}"
    BACKOFF.wait(who, client)
    digest = hashlib.sha256(secret.encode()).digest() if m else b""
    if row is not None and _verified(digest, row["secret_hash"]):
        ok = True
    else:
        ok = verify_secret(rest, row["secret_hash"] if row else _dummy_hash()) and row is not None
        if ok:
            _remember(digest, row["secret_hash"])
    ok = ok and row["expires_at"] > now_ms()
    ok = ok and (row["role_restriction"] is None or is_granted(cursor, row["user_name"], row["role_restriction"]))
    if not ok:
        BACKOFF.failed(who, client)
        raise AuthenticationFailed()
    BACKOFF.succeeded(who)
    return Identity(user=row["user_name"], role=row["role_restriction"])


def authenticate_password(cursor: Any, user: str, password: str, *, client: str = "") -> Identity:
    """The identity of ``user`` if ``password`` is its password.

    Raises:
        AuthenticationFailed: no such user, no password set, or a wrong one (one message for all).
    """
    user = user if isinstance(user, str) else ""
    row = usersdb.get_user(cursor, user) if 0 < len(user) <= _MAX_NAME else None
    BACKOFF.wait(user, client)
    stored = row["password_hash"] if row and row["password_hash"] else None
    password = password if isinstance(password, str) and len(password) <= MAX_SECRET else ""
    ok = verify_secret(password, stored or _dummy_hash()) and stored is not None
    if not ok:
        BACKOFF.failed(user, client)
        raise AuthenticationFailed()
    BACKOFF.succeeded(user)
    return Identity(user=row["name"], role=None)


# -------------------------------------------------------------------------------------------------------- tokens


def check_days(days: int | None) -> int:
    """DAYS_TO_EXPIRY: None is :data:`DEFAULT_DAYS`; else a whole number from 1 to :data:`MAX_DAYS`."""
    if days is None:
        return DEFAULT_DAYS
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidArgument(f"DAYS_TO_EXPIRY must be a whole number of days from 1 to {MAX_DAYS}, got {days!r}")
    return days


def mint_token(cursor: Any, user: str, name: str, *, role: str | None = None, days: int | None = None) -> str:
    """Add access token ``name`` to ``user`` and return its text (``dft_<id>_<secret>``): the only time it exists
    outside the caller's hands. ``role``: the ROLE_RESTRICTION (a role granted to the user); ``days``: days to
    expiry (default :data:`DEFAULT_DAYS`, at most :data:`MAX_DAYS`). Who may do this is the caller's check.

    Raises:
        NotFound: no such user. AlreadyExists: the user has a token of that name.
        InvalidArgument: a bad name or DAYS_TO_EXPIRY, a role not granted to the user, too many tokens.
    """
    days = check_days(days)
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME or not name.isprintable():
        raise InvalidArgument(f"a token's name is 1 to {_MAX_NAME} printable characters")
    if not usersdb.user_exists(cursor, user):
        raise NotFound(f"user '{user}' does not exist: CREATE USER {user} first (SHOW USERS lists them)")
    if usersdb.token_named(cursor, user, name) is not None:
        raise AlreadyExists(f"user {user} already has a programmatic access token named '{name}': REMOVE it "
                            "first, or choose another name")
    if role is not None and not is_granted(cursor, user, role):
        why = "does not exist" if role != ADMIN and not accessdb.role_exists(cursor, role) else \
            f"is not granted to user {user}"
        raise InvalidArgument(f"ROLE_RESTRICTION: role '{role}' {why}: GRANT ROLE {role} TO USER {user} first")
    if usersdb.count_tokens(cursor, user) >= MAX_TOKENS_PER_USER:
        raise InvalidArgument(f"user {user} has {MAX_TOKENS_PER_USER} programmatic access tokens, the most a user "
                              "may have: REMOVE one first (SHOW USER PROGRAMMATIC ACCESS TOKENS lists them)")
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    usersdb.add_token(cursor, token_id, user, name, hash_secret(secret), role, now_ms() + days * 86_400_000)
    return f"{TOKEN_PREFIX}{token_id}_{secret}"


def ensure_administrator(cursor: Any, user: str = "admin") -> bool:
    """Create user ``user`` (no password) as an administrator (granted role ``admin``) if it does not exist;
    True when it was created."""
    if usersdb.user_exists(cursor, user):
        return False
    usersdb.create_user(cursor, user, None, None)
    accessdb.add_member(cursor, ADMIN, "USER", user)
    return True


def first_token(cursor: Any, user: str = ADMIN, *, days: int | None = None,
                name: str | None = None) -> tuple[str, str]:
    """``duckdb-ft token``: a new token of ``user`` (user ``admin`` is created as an administrator if it does not
    exist; another user must exist), named ``name`` or ``cli_<UTC date>_<time>``: (token, its name)."""
    check_days(days)
    if user == ADMIN:
        ensure_administrator(cursor, user)
    elif not usersdb.user_exists(cursor, user):
        raise NotFound(f"user '{user}' does not exist: CREATE USER {user} first, or leave out --user to mint a "
                       "token of the administrator")
    if name is None:
        stamp = time.strftime("cli_%Y%m%d_%H%M%S", time.gmtime())
        name = next(f"{stamp}_{k}" if k else stamp for k in range(MAX_TOKENS_PER_USER + 1)
                    if usersdb.token_named(cursor, user, f"{stamp}_{k}" if k else stamp) is None)
    return mint_token(cursor, user, name, days=days), name
