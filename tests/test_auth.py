"""Tests for app/auth.py: salted scrypt hashes in an atomic, 0600 users file."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from app import auth

PASSWORD = "correct horse"


@pytest.fixture()
def users_file(tmp_path):
    """A users file with one admin and one annotator."""
    path = tmp_path / "users.json"
    auth.add_user(path, "alice", PASSWORD, "admin")
    auth.add_user(path, "bob", "bob-password", "annotator")
    return path


def test_file_holds_salted_scrypt_records(users_file):
    doc = json.loads(users_file.read_text())
    rec = doc["users"]["alice"]
    assert rec["algo"] == "scrypt"
    assert (rec["n"], rec["r"], rec["p"]) == (2**17, 8, 1)  # OWASP scrypt parameters
    assert rec["role"] == "admin"
    assert len(bytes.fromhex(rec["salt"])) == auth.SALT_BYTES
    assert len(bytes.fromhex(rec["hash"])) == auth.HASH_BYTES


def test_same_password_twice_gives_different_salts_and_hashes(tmp_path):
    path = tmp_path / "users.json"
    auth.add_user(path, "u1", PASSWORD, "annotator")
    auth.add_user(path, "u2", PASSWORD, "annotator")
    users = auth.load_users(path)
    assert users["u1"]["salt"] != users["u2"]["salt"]
    assert users["u1"]["hash"] != users["u2"]["hash"]
    assert auth.verify(users, "u1", PASSWORD) and auth.verify(users, "u2", PASSWORD)


def test_file_never_contains_the_password(users_file):
    raw = users_file.read_bytes()
    assert PASSWORD.encode() not in raw
    assert b"bob-password" not in raw
    assert PASSWORD.encode().hex().encode() not in raw


def test_verify_true_and_false(users_file):
    assert auth.verify(users_file, "alice", PASSWORD)
    assert auth.verify(str(users_file), "bob", "bob-password")
    assert not auth.verify(users_file, "alice", "wrong password")
    assert not auth.verify(users_file, "alice", "bob-password")
    assert not auth.verify(users_file, "nobody", PASSWORD)
    assert not auth.verify(users_file, "alice", "")
    assert not auth.verify(users_file, "Alice", PASSWORD)


def test_verify_accepts_loaded_users_and_rejects_non_text(users_file):
    users = auth.load_users(users_file)
    assert auth.verify(users, "alice", PASSWORD)
    assert not auth.verify(users, "alice", None)  # type: ignore[arg-type]
    assert not auth.verify(users, None, PASSWORD)  # type: ignore[arg-type]


def test_verify_rejects_malformed_record():
    users = {"eve": {"role": "admin", "algo": "md5", "salt": "00", "hash": "00"}}
    assert not auth.verify(users, "eve", PASSWORD)


def test_role_lookup(users_file):
    users = auth.load_users(users_file)
    assert auth.role_of(users, "alice") == "admin"
    assert auth.role_of(users, "bob") == "annotator"
    assert auth.role_of(users, "nobody") is None
    assert auth.role_of({"x": {"role": "root"}}, "x") is None


def test_add_user_replaces_password_and_role(users_file):
    auth.add_user(users_file, "bob", "a-new-password", "admin")
    users = auth.load_users(users_file)
    assert set(users) == {"alice", "bob"}
    assert auth.role_of(users, "bob") == "admin"
    assert auth.verify(users, "bob", "a-new-password")
    assert not auth.verify(users, "bob", "bob-password")
    assert auth.verify(users, "alice", PASSWORD)


def test_atomic_write_leaves_no_temp_files(users_file):
    for i in range(3):
        auth.add_user(users_file, f"user{i}", PASSWORD, "annotator")
    assert sorted(p.name for p in users_file.parent.iterdir()) == ["users.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(users_file, monkeypatch):
    before = users_file.read_bytes()

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(auth.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        auth.add_user(users_file, "carol", PASSWORD, "annotator")
    assert users_file.read_bytes() == before
    assert sorted(p.name for p in users_file.parent.iterdir()) == ["users.json"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_file_mode_is_0600(users_file, tmp_path):
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    fresh = tmp_path / "sub" / "dir" / "users.json"
    auth.add_user(fresh, "alice", PASSWORD, "admin")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_rewrite_tightens_a_loose_mode(users_file):
    os.chmod(users_file, 0o644)
    auth.add_user(users_file, "carol", PASSWORD, "annotator")
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "is empty"),
        ("al ice", "whitespace or control"),
        ("alice\n", "whitespace or control"),
        ("ali\x00ce", "whitespace or control"),
        ("a" * 65, "use at most 64"),
    ],
)
def test_bad_names(tmp_path, name, message):
    path = tmp_path / "users.json"
    with pytest.raises(auth.AuthError, match=message):
        auth.add_user(path, name, PASSWORD, "annotator")
    assert not path.exists()


def test_name_of_64_chars_is_fine(tmp_path):
    auth.add_user(tmp_path / "u.json", "a" * 64, PASSWORD, "annotator")
    assert auth.role_of(auth.load_users(tmp_path / "u.json"), "a" * 64) == "annotator"


def test_short_password_message_does_not_echo_it(tmp_path):
    with pytest.raises(auth.AuthError, match="7 characters long: use at least 8") as info:
        auth.add_user(tmp_path / "u.json", "alice", "s3cr3t!", "admin")
    assert "s3cr3t!" not in str(info.value)


def test_bad_role(tmp_path):
    with pytest.raises(
        auth.AuthError, match=r"role 'root' is not valid: use one of annotator, admin"
    ):
        auth.add_user(tmp_path / "u.json", "alice", PASSWORD, "root")


def test_missing_file_names_path_and_fix(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(auth.UsersFileError) as info:
        auth.load_users(path)
    assert str(path) in str(info.value)
    assert "python app.py add-user NAME --role admin" in str(info.value)


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("{not json", "not valid JSON"),
        ("[]", '"users"'),
        ('{"users": []}', '"users"'),
        ('{"users": {"a": {"role": "admin", "algo": "scrypt"}}}', "user 'a'"),
        ('{"users": {"a": {"role": "boss"}}}', "role 'boss'"),
    ],
)
def test_corrupt_file_names_path_and_fix(tmp_path, text, detail):
    path = tmp_path / "users.json"
    path.write_text(text)
    with pytest.raises(auth.UsersFileError) as info:
        auth.load_users(path)
    msg = str(info.value)
    assert str(path) in msg and detail in msg
    assert "python app.py add-user NAME --role admin" in msg
    # add_user must report a corrupt file, never silently overwrite it.
    with pytest.raises(auth.UsersFileError):
        auth.add_user(path, "alice", PASSWORD, "admin")
    assert path.read_text() == text


def test_huge_scrypt_cost_in_file_is_rejected(users_file):
    doc = json.loads(users_file.read_text())
    doc["users"]["alice"]["n"] = 2**30
    users_file.write_text(json.dumps(doc))
    with pytest.raises(auth.UsersFileError, match="out-of-range"):
        auth.load_users(users_file)


def test_gradio_auth_callable(users_file):
    check = auth.gradio_auth(users_file)
    assert check("alice", PASSWORD) is True
    assert check("alice", "nope-nope") is False
    # A user added later can log in without rebuilding the callable.
    auth.add_user(users_file, "carol", "carol-password", "annotator")
    assert check("carol", "carol-password") is True
    # A file that turns corrupt refuses logins instead of raising.
    users_file.write_text("garbage")
    assert check("alice", PASSWORD) is False


def test_gradio_auth_fails_fast_on_missing_file(tmp_path):
    with pytest.raises(auth.UsersFileError, match="does not exist"):
        auth.gradio_auth(tmp_path / "missing.json")


def test_auth_module_imports_no_ml_libraries():
    source = Path(auth.__file__).read_text(encoding="utf-8")
    for lib in ("torch", "peft", "transformers", "gradio"):
        assert f"import {lib}" not in source and f"from {lib}" not in source


def test_roles_disable_and_reset_change_one_record(tmp_path):
    path = tmp_path / "users.json"
    auth.add_user(path, "ann", "first-password", "annotator")
    auth.add_user(path, "bob", "other-password", "admin")
    auth.set_role(path, "ann", "admin")
    auth.set_disabled(path, "bob", True)
    assert auth.list_users(path) == [{"name": "ann", "role": "admin", "disabled": False},
                                     {"name": "bob", "role": "admin", "disabled": True}]
    users = auth.load_users(path)
    assert auth.role_of(users, "bob") is None  # disabled: no rights at all
    assert not auth.verify(path, "bob", "other-password")  # and no login
    auth.set_disabled(path, "bob", False)
    assert auth.verify(path, "bob", "other-password")
    auth.reset_password(path, "ann", "second-password")
    assert auth.verify(path, "ann", "second-password")
    assert not auth.verify(path, "ann", "first-password")
    assert auth.role_of(auth.load_users(path), "ann") == "admin"  # kept
    with pytest.raises(auth.AuthError, match="user 'cyd' is not in .*users: ann, bob"):
        auth.set_role(path, "cyd", "admin")
    with pytest.raises(auth.AuthError, match="role 'boss' is not valid"):
        auth.set_role(path, "ann", "boss")
