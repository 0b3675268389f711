"""Users, API tokens, the audit log and the first-run setup code, in one SQLite file.

Passwords are hashed with Argon2id (argon2-cffi's defaults); tokens are 256 random bits,
so a SHA-256 of each is enough to store and look up. Nothing readable is kept of either:
a token is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from pyedge.errors import PyEdgeError
from pyedge.security import Role
from pyedge.sqlite import transaction

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "pye_"
# check_name's rule, as a pattern and in words (for schemas).
NAME_PATTERN = r"^[A-Za-z0-9._@-]{1,64}$"
NAME_RULE = "names are 1-64 letters, digits, '.', '_', '-', '@'"
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
MIN_PASSWORD = 8
SETUP_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read off a log
IDENTITY_CACHE_SIZE = 1024
# The kept reader's page cache: it reads a row or two per lookup.
READER_CACHE_KIB = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    expires_at TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER,
    remote TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS setup (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    code_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


class AccountError(PyEdgeError):
    """A bad name, password or role, a duplicate, or the store failing."""


class NoSuchAccount(AccountError):
    """No user or token of that name."""


@dataclass(frozen=True)
class Identity:
    """Who is calling: a user (logged in) or a token, with its role."""

    name: str
    role: Role
    kind: str  # "user" or "token"

    @property
    def actor(self) -> str:
        """How the audit log names it, e.g. user:alice or token:ci."""
        return f"{self.kind}:{self.name}"


def now() -> str:
    """The time as the store writes it (ISO 8601 UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _epoch(stamp: str) -> float:
    """A time as the store writes it, in seconds since the epoch."""
    return datetime.fromisoformat(stamp).timestamp()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    """A user or token name: 1-64 of letters, digits and . _ - @."""
    if not 1 <= len(name) <= 64 or set(name) - NAME_CHARS:
        raise AccountError(f"{name!r}: {NAME_RULE}")
    return name


# SQLite's words for a taken name, in the words of the API.
TAKEN = {
    "users.name": "a user of that name already exists",
    "tokens.name": "a token of that name already exists",
}


def duplicate(exc: sqlite3.IntegrityError) -> str:
    """A readable message for a name that is taken (SQLite says which column)."""
    for column, message in TAKEN.items():
        if column in str(exc):
            return message
    return f"already exists ({exc})"


@dataclass(frozen=True)
class _Known:
    """A caller read from the file: whether it is still valid, and when it was last noted."""

    identity: Identity
    generation: int
    expires_at: float | None = None  # time.time(); tokens only
    used_minute: int | None = None  # time.time() // 60 of the last-use stamp; tokens only


class IdentityCache:
    """Callers looked up before, until the file changes: each request looks up its caller,
    and the read costs more than the rest of a light request.

    A change through any connection (this process's or another's, such as the CLI's)
    voids them: the store asks SQLite before each lookup (AccountStore._sync).
    """

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], _Known] = {}
        self.generation = 0

    def invalidate(self) -> None:
        """Forget every caller (users or tokens changed)."""
        self.generation += 1
        self._known = {}

    def get(self, key: tuple[str, str]) -> _Known | None:
        """The caller under `key` if nothing changed since it was read."""
        known = self._known.get(key)
        if known is None or known.generation != self.generation:
            return None
        return known

    def put(self, key: tuple[str, str], known: _Known) -> None:
        """Remember a caller (the cache is bounded: a flood of callers empties it)."""
        if known.generation != self.generation:
            return  # read before a change
        if len(self._known) >= IDENTITY_CACHE_SIZE:
            self._known = {}
        self._known[key] = known


class AccountStore:
    """The node's accounts in `<data_dir>/accounts.db`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._hasher = PasswordHasher()
        self._dummy = ""
        self._reading = threading.Lock()
        self._reader_db: sqlite3.Connection | None = None
        self._version: int | None = None
        self._cache = IdentityCache()
        # Owner-only from the start (SQLite gives its -wal and -shm files the same mode).
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        with self._session() as db:
            db.executescript(SCHEMA)  # a script commits by itself

    def _reader(self) -> sqlite3.Connection:
        """The process's read-only connection, kept (hold `_reading`): every request looks up
        its caller, and opening a connection per lookup cost more than the rest of the
        request. One for all threads: a lookup is a few microseconds, and a connection per
        request thread held ~150 KiB each."""
        if self._reader_db is None:
            db = sqlite3.connect(
                self.path, isolation_level=None, timeout=10, check_same_thread=False
            )
            db.execute("PRAGMA query_only=ON")
            db.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
            self._reader_db = db
        return self._reader_db

    def _sync(self) -> None:
        """Forget the known callers if the file changed since the last lookup.

        SQLite's data_version differs between two asks on one connection when any other
        connection committed in between (this process's writes go through others).
        """
        try:
            with self._reading:
                version = self._reader().execute("PRAGMA data_version").fetchone()[0]
                if version != self._version:
                    self._version = version
                    self._cache.invalidate()
        except sqlite3.Error as exc:
            raise AccountError(f"accounts {self.path}: {exc}") from exc

    def _read(self, query: str, args: tuple[Any, ...]) -> Any:
        """One row of a read on the kept connection (autocommit: always current)."""
        try:
            with self._reading:
                return self._reader().execute(query, args).fetchone()
        except sqlite3.Error as exc:
            raise AccountError(f"accounts {self.path}: {exc}") from exc

    @contextmanager
    def _session(
        self, write: bool = False, accounts_change: bool = True
    ) -> Iterator[sqlite3.Connection]:
        """A connection of its own per call: the CLI and the server share the file, and
        a request never waits for another's; any SQLite error becomes an AccountError.

        A write that may change users or tokens (`accounts_change`) voids the callers
        known so far, before and after it: a lookup racing it cannot keep the old answer.
        """
        if write and accounts_change:
            self._cache.invalidate()
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        except sqlite3.Error as exc:
            raise AccountError(f"accounts {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # WAL with NORMAL: a power cut may lose the last commit (a last-use time, an
            # audit line), never corrupt the file; a flush per request would wear an SD card.
            db.execute("PRAGMA synchronous=NORMAL")
            with transaction(db, write):
                yield db
        except sqlite3.IntegrityError as exc:
            raise AccountError(duplicate(exc)) from exc
        except sqlite3.Error as exc:
            raise AccountError(f"accounts {self.path}: {exc}") from exc
        finally:
            db.close()
            if write and accounts_change:
                self._cache.invalidate()

    def close(self) -> None:
        """Close the kept reader (every other call opens and closes its own connection)."""
        with self._reading:
            if self._reader_db is not None:
                self._reader_db.close()
                self._reader_db = None

    # --- users ----------------------------------------------------------------------------

    def add_user(self, name: str, password: str, role: Role) -> None:
        """Create a user; AccountError if the name is taken or the password too short."""
        check_name(name)
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
        hashed = self._hasher.hash(password)
        with self._session(write=True) as db:
            self._insert_user(db, name, role, hashed)

    @staticmethod
    def _insert_user(db: sqlite3.Connection, name: str, role: Role, hashed: str) -> None:
        db.execute(
            "INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
            (name, role.label, hashed, now()),
        )
        # Once a user exists the first-run code is void, whoever made the user.
        db.execute("DELETE FROM setup")

    def has_users(self) -> bool:
        """True once any user exists (the first run is over)."""
        with self._session() as db:
            return db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def users(self) -> list[dict[str, Any]]:
        """Every user: name, role, created_at."""
        with self._session() as db:
            rows = db.execute("SELECT name, role, created_at FROM users ORDER BY name").fetchall()
        return [{"name": n, "role": r, "created_at": c} for n, r, c in rows]

    def user(self, name: str) -> Identity | None:
        """A user's identity (its current role), or None."""
        key = ("user", name)
        self._sync()
        known = self._cache.get(key)
        if known is not None:
            return known.identity
        generation = self._cache.generation
        row = self._read("SELECT role FROM users WHERE name = ?", (name,))
        if row is None:
            return None
        identity = Identity(name, Role.parse(row[0]), "user")
        self._cache.put(key, _Known(identity, generation))
        return identity

    def delete_user(self, name: str) -> None:
        """Delete a user; NoSuchAccount if there is none, AccountError for the last admin."""
        with self._session(write=True) as db:
            row = db.execute("SELECT role FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NoSuchAccount(f"no user {name!r}")
            admins = db.execute("SELECT COUNT(*) FROM users WHERE role = 'admin'").fetchone()[0]
            if row[0] == Role.ADMIN.label and admins == 1:
                # The node would be left with no one to manage it but the device's CLI.
                raise AccountError(f"{name} is the last admin: add another admin first")
            db.execute("DELETE FROM users WHERE name = ?", (name,))

    def verify_password(self, name: str, password: str) -> Identity | None:
        """The user's identity when the password is right, else None (same time either way)."""
        with self._session() as db:
            row = db.execute(
                "SELECT role, password_hash FROM users WHERE name = ?", (name,)
            ).fetchone()
        # An unknown name is hashed against a dummy, so that timing does not tell names.
        stored = row[1] if row else self._dummy_hash()
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        return Identity(name, Role.parse(row[0]), "user") if row else None

    def _dummy_hash(self) -> str:
        if not self._dummy:
            self._dummy = self._hasher.hash(secrets.token_hex(16))
        return self._dummy

    # --- tokens ---------------------------------------------------------------------------

    def create_token(self, name: str, role: Role, expires_days: float | None = None) -> str:
        """Create a named token; returns it (the only time it is readable)."""
        check_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = (
            (datetime.now(UTC) + timedelta(days=expires_days)).isoformat(timespec="seconds")
            if expires_days
            else None
        )
        with self._session(write=True) as db:
            db.execute(
                "INSERT INTO tokens (name, role, token_hash, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, role.label, _digest(token), now(), expires),
            )
        return token

    def tokens(self) -> list[dict[str, Any]]:
        """Every token: name, role, created_at, last_used_at, expires_at (never the token)."""
        with self._session() as db:
            rows = db.execute(
                "SELECT name, role, created_at, last_used_at, expires_at FROM tokens ORDER BY name"
            ).fetchall()
        keys = ("name", "role", "created_at", "last_used_at", "expires_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def revoke_token(self, name: str) -> None:
        """Revoke (delete) a token; NoSuchAccount if there is none."""
        with self._session(write=True) as db:
            if db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount == 0:
                raise NoSuchAccount(f"no token {name!r}")

    def verify_token(self, token: str) -> Identity | None:
        """The token's identity if it exists and has not expired; notes its last use."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        key = ("token", _digest(token))
        self._sync()
        known = self._cache.get(key) or self._read_token(key)
        if known is None:
            return None
        stamp = time.time()
        if known.expires_at is not None and known.expires_at <= stamp:
            return None
        # Written at most once a minute: a write per request would cost a commit each.
        minute = int(stamp // 60)
        if known.used_minute != minute:
            try:
                with self._session(write=True, accounts_change=False) as db:
                    db.execute(
                        "UPDATE tokens SET last_used_at = ? WHERE name = ?",
                        (now(), known.identity.name),
                    )
            except AccountError as exc:
                # A note, not the answer: a full disk must not lock every client out (the
                # fault suite). Tried again next minute, so logged once a minute at most.
                logger.warning("token %s: last use not noted: %s", known.identity.name, exc)
            self._cache.put(key, replace(known, used_minute=minute))
        return known.identity

    def _read_token(self, key: tuple[str, str]) -> _Known | None:
        """The token under `key` as the file has it (remembered), or None."""
        generation = self._cache.generation
        row = self._read(
            "SELECT name, role, expires_at, last_used_at FROM tokens WHERE token_hash = ?",
            (key[1],),
        )
        if row is None:
            return None
        name, role, expires, last_used = row
        known = _Known(
            Identity(name, Role.parse(role), "token"),
            generation,
            expires_at=_epoch(expires) if expires else None,
            used_minute=int(_epoch(last_used) // 60) if last_used else None,
        )
        self._cache.put(key, known)
        return known

    # --- first run ------------------------------------------------------------------------

    def new_setup_code(self) -> str:
        """A fresh one-time setup code (the previous one stops working)."""
        code = "-".join(
            "".join(secrets.choice(SETUP_CODE_ALPHABET) for _ in range(4)) for _ in range(3)
        )
        with self._session(write=True) as db:
            db.execute(
                "INSERT OR REPLACE INTO setup (id, code_hash, created_at) VALUES (1, ?, ?)",
                (_digest(code), now()),
            )
        return code

    def first_admin(self, code: str, name: str, password: str) -> Identity:
        """Create the first admin with the setup code; the code works once.

        AccountError when the code is wrong or used, or a user exists already. The checks
        and the insert are one write transaction, so two requests racing with the right
        code make one admin, not two.
        """
        check_name(name)
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
        hashed = self._hasher.hash(password)  # slow: done before taking the write lock
        given = _digest(code.strip().upper())
        with self._session(write=True) as db:
            row = db.execute("SELECT code_hash FROM setup WHERE id = 1").fetchone()
            if row is None or not hmac.compare_digest(row[0], given):
                raise AccountError("wrong or used setup code")
            if db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None:
                raise AccountError("the first admin exists already")
            self._insert_user(db, name, Role.ADMIN, hashed)
        return Identity(name, Role.ADMIN, "user")

    # --- audit ----------------------------------------------------------------------------

    def audit(
        self,
        actor: str,
        action: str,
        target: str,
        status: int | None,
        remote: str | None,
        detail: str = "",
    ) -> None:
        """Record a change: who, what, on what, with which outcome, from where."""
        with self._session(write=True, accounts_change=False) as db:
            db.execute(
                "INSERT INTO audit (ts, actor, action, target, status, remote, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now(), actor, action, target, status, remote, detail),
            )

    def audit_log(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """The latest entries, newest first (`before`: entries with a smaller id)."""
        query = "SELECT id, ts, actor, action, target, status, remote, detail FROM audit"
        args: tuple[Any, ...] = ()
        if before is not None:
            query += " WHERE id < ?"
            args = (before,)
        with self._session() as db:
            rows = db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        keys = ("id", "ts", "actor", "action", "target", "status", "remote", "detail")
        return [dict(zip(keys, row, strict=True)) for row in rows]
