"""Team-tab callbacks as plain functions: the audit log of admin actions, and users
managed in the app (a disabled user refused at once)."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from app import views
from app.api import Handlers, help_table
from app.config import AppConfig
from storage.readers import read_jsonl
from tests.ui_fixtures import ADMIN, ANNOTATOR, request, write_users

LOCAL = AppConfig()  # no auth file: local single-user mode, the caller is 'local', an admin
ME = request(None)


def test_admin_actions_are_audited_and_exported(svc, tmp_path):
    h = Handlers(svc, LOCAL)
    specs = views.settings_specs(svc.settings(), help_table())
    values = [0.3 if s["name"] == "beta" else s["value"] for s in specs]
    h.save_settings(specs, values, ME)
    h.rollback("base", ME)
    prompts = tmp_path / "p.txt"
    prompts.write_text("One more prompt\n", encoding="utf-8")
    h.import_prompts(str(prompts), ME)
    log = svc.store.audit_log()
    assert [e["action"] for e in log] == ["import_prompts", "rollback", "settings"]
    assert all(e["admin"] == "local" and e["at"] for e in log)
    assert log[2]["detail"] == {"changes": {"train": {"beta": 0.3}}}
    assert log[0]["detail"] == {"file": "p.txt", "new_prompts": 1}
    rows = read_jsonl(h.export("audit", ME))
    assert [r["action"] for r in rows] == ["settings", "rollback", "import_prompts"]


def test_admins_manage_users_and_a_disabled_user_is_refused_at_once(svc, tmp_path):
    from app import auth

    users = write_users(tmp_path / "users.json")
    h = Handlers(svc, AppConfig(auth_file=str(users)))
    alice, bob, carol = request(ADMIN), request(ANNOTATOR), request("carol")
    assert "Added **carol** (annotator)" in h.user_action("add", "carol", "carol-pass-1",
                                                          "annotator", alice)
    svc.pool.fill_once(2)
    h.on_load(carol)  # carol works
    assert "is disabled" in h.user_action("disable", "carol", "", "", alice)
    with pytest.raises(gr.Error, match="account 'carol' is disabled: nothing was done"):
        h.on_load(carol)
    h.user_action("enable", "carol", "", "", alice)
    h.on_load(carol)
    h.user_action("reset", "carol", "new-carol-pass", "", alice)
    assert auth.verify(users, "carol", "new-carol-pass")
    assert "is now an admin" in h.user_action("role", "carol", "", "admin", alice)
    with pytest.raises(gr.Error, match="cannot demote or disable yourself"):
        h.user_action("disable", ADMIN, "", "", alice)
    with pytest.raises(gr.Error, match="Only admins may manage users"):
        h.user_action("add", "dan", "dan-password-1", "admin", bob)
    with pytest.raises(gr.Error, match="Not changed: user 'carol' exists already"):
        h.user_action("add", "carol", "x-password-2", "annotator", alice)
    assert list(h.users_view(alice)["name"]) == [ADMIN, ANNOTATOR, "carol"]
    log = [(e["action"], e["detail"].get("user")) for e in reversed(svc.store.audit_log())]
    assert log == [("user_add", "carol"), ("user_disable", "carol"), ("user_enable", "carol"),
                   ("user_reset", "carol"), ("user_role", "carol")]
    assert "carol-pass" not in json.dumps(svc.store.audit_log())  # never a password
