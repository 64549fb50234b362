"""Accounts for the web app: a JSON users file with salted scrypt hashes.

The file (``--auth-file`` / ``LIVEDPO_AUTH_FILE``) looks like::

    {"users": {"alice": {"role": "admin", "salt": "<hex>", "hash": "<hex>",
                         "algo": "scrypt", "n": 131072, "r": 8, "p": 1}}}

Passwords are never stored: only a random per-user salt and ``hashlib.scrypt`` of
the password, compared with ``hmac.compare_digest``, at OWASP's scrypt parameters
(N = 2^17, r = 8, p = 1: 128 MB and a few hundred milliseconds per hash). A record with
older, cheaper parameters still verifies and is re-hashed at its next successful login
(``verify_and_upgrade``). Writes are atomic (storage/files.py) and the file is created
with mode 0600. Logins run off the event loop and are throttled: app/logins.py.

Only the standard library is used here (no torch/peft/transformers in app/).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from storage.files import atomic_write

ROLES = ("annotator", "admin")
MIN_PASSWORD_LEN = 8
MAX_NAME_LEN = 64
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
FILE_MODE = 0o600
# Upper bounds on the cost parameters read from a file, so that a tampered file
# cannot make every login allocate gigabytes.
_MAX_N = 2**20
_MAX_RP = 64
_RECREATE_HINT = "python app.py add-user NAME --role admin"

log = logging.getLogger(__name__)
_FILE_LOCK = threading.Lock()  # read-modify-write of the users file within this process

Users = dict[str, dict[str, Any]]


class AuthError(ValueError):
    """A bad user name, password or role; the message says what to change."""


class UsersFileError(AuthError):
    """The users file is missing, unreadable or corrupt; the message names it."""


# --------------------------------------------------------------------------- validation


def validate_name(name: Any) -> str:
    """Return ``name`` if it is a usable user name, else raise :class:`AuthError`."""
    if not isinstance(name, str) or not name:
        raise AuthError(f"user name {name!r} is empty: give a name such as 'alice'")
    if len(name) > MAX_NAME_LEN:
        raise AuthError(
            f"user name {name[:20]!r}... is {len(name)} characters long: use at most {MAX_NAME_LEN}"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in name):
        raise AuthError(
            f"user name {name!r} contains whitespace or control characters: "
            "use letters, digits and punctuation only, e.g. 'alice.smith'"
        )
    return name


def validate_password(password: Any) -> str:
    """Return ``password`` if it is long enough, else raise :class:`AuthError`.

    The password itself is never put into the message.
    """
    if not isinstance(password, str):
        raise AuthError(f"password must be text, not {type(password).__name__}")
    if len(password) < MIN_PASSWORD_LEN:
        raise AuthError(
            f"password is {len(password)} characters long: "
            f"use at least {MIN_PASSWORD_LEN} characters"
        )
    return password


def validate_role(role: Any) -> str:
    """Return ``role`` if it is one of :data:`ROLES`, else raise :class:`AuthError`."""
    if role not in ROLES:
        raise AuthError(f"role {role!r} is not valid: use one of {', '.join(ROLES)}")
    return role


# --------------------------------------------------------------------------- hashing


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt of ``password`` with enough ``maxmem`` for the given cost."""
    maxmem = 2 * 128 * r * (n + p) + (1 << 20)
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=HASH_BYTES
    )


def hash_password(
    password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> dict[str, Any]:
    """Return the stored form (salt, hash, algo, n, r, p) of ``password`` with a fresh salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p)
    return {"salt": salt.hex(), "hash": digest.hex(), "algo": "scrypt", "n": n, "r": r, "p": p}


def _record_problem(record: Any) -> str | None:
    """Describe what is wrong with one stored user record, or None if it is usable."""
    if not isinstance(record, Mapping):
        return "is not an object"
    if record.get("role") not in ROLES:
        return f"has role {record.get('role')!r} (expected one of {', '.join(ROLES)})"
    if not isinstance(record.get("disabled", False), bool):
        return "has a 'disabled' flag that is not true or false"
    if record.get("algo") != "scrypt":
        return f"has algo {record.get('algo')!r} (expected 'scrypt')"
    n, r, p = record.get("n"), record.get("r"), record.get("p")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, r, p)):
        return "has non-integer scrypt parameters n, r, p"
    if n < 2 or n > _MAX_N or n & (n - 1) or not 0 < r <= _MAX_RP or not 0 < p <= _MAX_RP:
        return f"has out-of-range scrypt parameters n={n}, r={r}, p={p}"
    for key in ("salt", "hash"):
        try:
            if not bytes.fromhex(record.get(key)):
                return f"has an empty {key}"
        except (TypeError, ValueError):
            return f"has a {key} that is not hex"
    return None


def _matches(record: Mapping[str, Any], password: str) -> bool:
    """True if ``password`` hashes to the record's stored hash."""
    salt = bytes.fromhex(record["salt"])
    expected = bytes.fromhex(record["hash"])
    digest = _scrypt(password, salt, record["n"], record["r"], record["p"])
    return hmac.compare_digest(digest, expected)


# --------------------------------------------------------------------------- the file


def _first_admin(path: Path) -> str:
    """The command that creates the first admin in ``path`` (in the Docker image: the
    ``docker run`` that does it on the data volume)."""
    command = f"python app.py add-user NAME --role admin --auth-file {path}"
    if os.environ.get("LIVEDPO_IN_DOCKER"):
        return f"docker run --rm -it -v livedpo-data:/data livedpo {command}"
    return command


def _corrupt(path: Path, detail: str) -> UsersFileError:
    return UsersFileError(
        f"users file {path} is unreadable: {detail}. Fix it, or move it aside and "
        f"recreate the accounts with `{_RECREATE_HINT}`"
    )


def _parse(path: Path, text: str) -> Users:
    """Parse and check the users file's text; raise :class:`UsersFileError` if corrupt."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _corrupt(path, f"not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("users"), dict):
        raise _corrupt(path, 'expected an object of the form {"users": {...}}')
    users = doc["users"]
    for name, record in users.items():
        problem = _record_problem(record)
        if problem:
            raise _corrupt(path, f"user {name!r} {problem}")
    return users


def load_users(path: str | os.PathLike[str]) -> Users:
    """Read the users file and return ``{name: record}``.

    Raises :class:`UsersFileError` naming the path if it is missing, unreadable or
    corrupt (with the command that recreates it).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsersFileError(f"users file {path} does not exist: create the first admin with "
                             f"`{_first_admin(path)}`") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(path, str(exc)) from exc
    return _parse(path, text)


def _write_users(path: Path, users: Users) -> None:
    """Write ``{"users": users}`` to ``path`` atomically, as a 0600 file."""
    text = json.dumps({"users": users}, indent=2, sort_keys=True) + "\n"
    atomic_write(path, text, mode=FILE_MODE)


def add_user(path: str | os.PathLike[str], name: str, password: str, role: str) -> None:
    """Add ``name`` (or replace its password and role) in the users file at ``path``.

    Creates the file (and its directory) if missing. Validates everything before
    touching the file; a corrupt existing file is reported, never overwritten.
    Concurrent ``add_user`` calls on one file are not serialised: the last one wins.
    """
    validate_name(name)
    validate_password(password)
    validate_role(role)
    path = Path(path)
    users = load_users(path) if path.exists() else {}
    users[name] = {"role": role, **hash_password(password)}
    _write_users(path, users)


def _change(path: str | os.PathLike[str], name: str, change: Callable[[dict], None]) -> None:
    """Apply ``change`` to one existing user's record and write the file atomically."""
    path = Path(path)
    with _FILE_LOCK:
        users = load_users(path)
        if name not in users:
            known = ", ".join(sorted(users)) or "none"
            raise AuthError(f"user {name!r} is not in {path} (users: {known}); add them first")
        record = dict(users[name])
        change(record)
        users[name] = record
        _write_users(path, users)


def set_role(path: str | os.PathLike[str], name: str, role: str) -> None:
    """Make an existing user an annotator or an admin."""
    validate_role(role)
    _change(path, name, lambda r: r.update(role=role))


def set_disabled(path: str | os.PathLike[str], name: str, disabled: bool) -> None:
    """Disable (or enable again) an existing user: a disabled user cannot log in, and
    their next request on an open session is refused (app/access.py)."""
    _change(path, name, lambda r: r.update(disabled=bool(disabled)))


def reset_password(path: str | os.PathLike[str], name: str, password: str) -> None:
    """Give an existing user a new password (role and disabled flag kept)."""
    validate_password(password)
    _change(path, name, lambda r: r.update(hash_password(password)))


def list_users(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """[{name, role, disabled}] of the users file, by name (no hashes)."""
    return [{"name": n, "role": r["role"], "disabled": bool(r.get("disabled"))}
            for n, r in sorted(load_users(path).items())]


# --------------------------------------------------------------------------- checking


def verify(
    path_or_users: str | os.PathLike[str] | Mapping[str, Any], name: str, password: str
) -> bool:
    """True if ``name`` exists and ``password`` is its password.

    ``path_or_users`` is a users-file path or the mapping :func:`load_users` returns.
    Unknown users cost the same scrypt work as known ones, so timing does not tell
    which names exist. A malformed record never matches.
    """
    users = path_or_users if isinstance(path_or_users, Mapping) else load_users(path_or_users)
    if not isinstance(name, str) or not isinstance(password, str):
        return False
    record = users.get(name)
    if record is None or _record_problem(record) is not None or record.get("disabled"):
        _scrypt(password, b"\0" * SALT_BYTES, SCRYPT_N, SCRYPT_R, SCRYPT_P)  # equal timing
        return False
    return _matches(record, password)


def needs_upgrade(record: Mapping[str, Any]) -> bool:
    """True if a record was hashed with other parameters than today's."""
    return (record.get("n"), record.get("r"), record.get("p")) != (SCRYPT_N, SCRYPT_R,
                                                                   SCRYPT_P)


def verify_and_upgrade(path: str | os.PathLike[str], name: str, password: str) -> bool:
    """``verify`` against the users file; on success, a record hashed with older
    parameters is re-hashed with today's (same salt length, new salt) and written back
    atomically, unless it changed in the meantime (a new password set meanwhile wins)."""
    users = load_users(path)
    if not verify(users, name, password):
        return False
    if needs_upgrade(users[name]):
        with _FILE_LOCK:
            fresh = load_users(path)
            if fresh.get(name, {}).get("hash") == users[name]["hash"]:
                fresh[name] = {**fresh[name], **hash_password(password)}
                _write_users(Path(path), fresh)
                log.info("user %r: password hash upgraded to scrypt n=%d", name, SCRYPT_N)
    return True


def role_of(users: Mapping[str, Any], name: str) -> str | None:
    """The role of ``name`` in ``users`` ("annotator" or "admin"), or None if unknown or
    disabled."""
    record = users.get(name) if isinstance(name, str) else None
    if not isinstance(record, Mapping) or record.get("disabled"):
        return None
    role = record.get("role")
    return role if role in ROLES else None


def gradio_auth(path: str | os.PathLike[str]) -> Callable[[str, str], bool]:
    """Return the ``auth=`` callable for Gradio's ``launch``.

    The file is read once now (so a missing or corrupt file fails at start-up with a
    clear message) and again at every login, so ``add-user`` takes effect without a
    restart. If the file turns corrupt later, logins are refused rather than crashing.
    """
    path = Path(path)
    load_users(path)

    def check(username: str, password: str) -> bool:
        try:
            return verify(path, username, password)
        except UsersFileError as exc:
            log.warning("login refused: %s", exc)
            return False

    return check
