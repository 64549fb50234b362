"""Roles against the running app with an auth file (real service on the tiny model, v1
trained so that rollback and the adapter download have something to act on):

- without a login every endpoint is refused (each event by fn_index, each named API, the
  config, upload and file routes; gradio_client cannot connect);
- an annotator calling ANY admin endpoint (train now, settings, rollback, exports, the
  adapter download, prompt import, dashboards) gets an error naming the rule, and the
  database, settings, serving version, trainer and temp files are untouched; the same
  calls by an admin succeed, so each refusal is the role check and nothing else;
- a demoted admin is refused at once (the users file is read per call);
- passwords exist only as salted scrypt hashes: the file holds scrypt(password, salt) with
  a per-user random salt, and no form of the password is in any file."""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from app import auth, views
from app.api import help_table
from tests.hostile_fixtures import (
    db_snapshot,
    error_of,
    file_data,
    fn_indices,
    run_event,
    session,
    upload,
)
from tests.svc_fixtures import tiny_service, vote_all
from tests.ui_fixtures import ADMIN, ANNOTATOR, PASSWORD, api_client, launch_app, write_users

PUBLIC_ADMIN = {"/train_now": (), "/rollback": ("base",),
                "/update_settings": ({"train": {"beta": 0.5}},)}
PRIVATE_ADMIN = ("train_live", "forms", "save", "train_now", "data_view", "team_view",
                 "adjudicate", "users_view", "user_action", "export",
                 "download_adapter", "download_merged", "import_prompts", "rollback")  # rollback last: v1 -> base


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("roles")
    users = write_users(tmp / "users.json")
    svc = tiny_service(tmp / "data", tiny_model_dir, "--accept-tolerance", "1")
    svc.pool.fill_once(8)
    vote_all(svc, "trainer-votes")
    assert svc.trainer.run_one("test").version == "v1"
    svc.pool.fill_once(2)
    files = tmp / "tmp"  # where exports and zips would appear
    files.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(files))
        demo, url = launch_app(svc, tmp, str(users))
        yield svc, demo, url, users, files
        demo.close()
    svc.stop()


def state(svc, files: Path) -> dict:
    """Everything an admin action could change."""
    return {"db": db_snapshot(svc.store), "settings": svc.settings(),
            "serving": (svc.store.serving_adapter(), svc.policy.serving),
            "asked": svc.trainer._asked.is_set(),
            "files": sorted(p.name for p in files.glob("livedpo*"))}


def private_calls(svc, demo, h) -> list[tuple[str, int, list]]:
    """(name, fn_index, inputs) of every hidden admin event, with inputs that WOULD change
    something if the role check were missing (a new beta, base instead of v1, a file)."""
    specs = views.settings_specs(svc.settings(), help_table())
    values = [0.5 if s["name"] == "beta" else s["value"] for s in specs]
    prompts = upload(h, "new-prompts.txt", b"A prompt an annotator must not import\n")
    inputs = {"save": values, "rollback": ["base"], "import_prompts": [file_data(prompts)],
              "adjudicate": [1, "B is better"],
              "user_action": ["carol", "carol-password-1", "annotator"]}
    return [(name, i, inputs.get(name, [])) for name in PRIVATE_ADMIN
            for i in fn_indices(demo, name, "private")]


def test_no_login_no_access(served):
    svc, demo, url, _, files = served
    before = state(svc, files)
    with session(url) as h:
        for i in demo.fns:
            assert run_event(h, i, []).get("refused") == 401, f"fn_index {i} ran, no login"
        for name in ("next_pair", "vote", "status", "train_now", "rollback",
                     "update_settings"):
            assert h.post(f"gradio_api/call/{name}", json={"data": []}).status_code == 401
        for path in ("config", "gradio_api/info", "gradio_api/openapi.json",
                     f"gradio_api/file={svc.data_dir}/livedpo.db"):
            assert h.get(path).status_code == 401, path
        assert h.post("gradio_api/upload", files={"files": ("x.txt", b"x")}).status_code == 401
        bad = h.post("login", data={"username": ANNOTATOR, "password": "wrong-password"})
        assert bad.status_code != 200
    with pytest.raises(Exception, match="credentials were not provided"):
        api_client(url)
    with pytest.raises(ValueError, match="Could not login"):
        api_client(url, auth=(ADMIN, "not-the-password"))
    assert state(svc, files) == before


def test_annotator_is_refused_every_admin_endpoint_and_nothing_changes(served):
    svc, demo, url, _, files = served
    client = api_client(url, auth=(ANNOTATOR, PASSWORD))
    with session(url, ANNOTATOR, PASSWORD) as h:
        calls = private_calls(svc, demo, h)
        assert len(calls) >= 13  # every hidden admin event was found
        before = state(svc, files)
        for name, args in PUBLIC_ADMIN.items():
            with pytest.raises(Exception, match=f"Only admins may .*'{ANNOTATOR}' is an "
                                                "annotator"):
                client.predict(*args, api_name=name)
        for name, i, inputs in calls:
            error = error_of(run_event(h, i, inputs))
            assert "Only admins may" in error and f"'{ANNOTATOR}' is an annotator" in error, (
                name, error)
        assert state(svc, files) == before
    with session(url, ADMIN, PASSWORD) as h:  # the same calls work for an admin
        for name, i, inputs in private_calls(svc, demo, h):
            msg = run_event(h, i, inputs)
            assert msg.get("success"), (name, error_of(msg))
    after = state(svc, files)
    assert after["settings"]["train"]["beta"] == 0.5 and after["serving"] == ("base", "base")
    assert after["asked"] and len(after["files"]) == 6  # 4 exports, the adapter, the model
    assert svc.store.one("select count(*) as n from prompts where text = ?",
                         ["A prompt an annotator must not import"])["n"] == 1


def test_demoted_admin_is_refused_at_once(served):
    svc, _, url, users, files = served
    client = api_client(url, auth=(ADMIN, PASSWORD))
    assert "Training round requested by alice" in client.predict(api_name="/train_now")
    auth.add_user(users, ADMIN, PASSWORD, "annotator")
    try:
        before = state(svc, files)
        with pytest.raises(Exception, match=f"Only admins may .*'{ADMIN}' is an annotator"):
            client.predict({"train": {"beta": 0.3}}, api_name="/update_settings")
        assert state(svc, files) == before
    finally:
        auth.add_user(users, ADMIN, PASSWORD, "admin")
    assert client.predict({"train": {"beta": 0.3}}, api_name="/update_settings")[
        "train"]["beta"] == 0.3


def password_forms(password: str) -> list[bytes]:
    raw = password.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), password.encode("utf-16-le"),
            hashlib.sha256(raw).hexdigest().encode(), hashlib.md5(raw).hexdigest().encode()]


def test_passwords_are_salted_scrypt_hashes_and_nowhere_else(served):
    svc, _, _, users, _ = served
    records = json.loads(users.read_text())["users"]
    assert {ADMIN, ANNOTATOR} <= set(records)  # (and users the admin tests added)
    records = {k: v for k, v in records.items() if k in (ADMIN, ANNOTATOR)}
    salts = set()
    for rec in records.values():
        assert set(rec) == {"role", "salt", "hash", "algo", "n", "r", "p"}
        salt, digest = bytes.fromhex(rec["salt"]), bytes.fromhex(rec["hash"])
        assert rec["algo"] == "scrypt" and len(salt) >= 16 and len(digest) >= 32
        assert rec["n"] >= 2**17 and rec["r"] >= 8 and rec["p"] >= 1
        assert 128 * rec["n"] * rec["r"] >= 16 * 2**20  # >= 16 MiB of memory per guess
        assert digest == hashlib.scrypt(PASSWORD.encode(), salt=salt, n=rec["n"], r=rec["r"],
                                        p=rec["p"], maxmem=2**28, dklen=len(digest))
        salts.add(salt)
    assert len(salts) == len(records)  # the same password, a different salt and hash
    assert len({rec["hash"] for rec in records.values()}) == len(records)
    # After all the logins of this module, no form of the password is in any file.
    for path in [users, *Path(svc.data_dir).rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(form in data for form in password_forms(PASSWORD)), path
