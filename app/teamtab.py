"""The Team tab's user management (admins only): add users, change roles, disable or
enable them, reset passwords. Mixed into ``Handlers`` (app/api.py), whose ``access``,
``store`` and ``cfg`` it uses. Every change goes to the audit log (never a password)."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app import auth
from app.inputs import fail

USER_ACTIONS = ("add", "role", "disable", "enable", "reset")


class TeamHandlers:
    def users_view(self, request: gr.Request) -> pd.DataFrame:
        """The users file as a table (name, role, disabled)."""
        self.access.require_admin(request, "see the users")
        if not self.cfg.auth_file:
            return pd.DataFrame([{"name": "local", "role": "admin", "disabled": False}])
        return pd.DataFrame(auth.list_users(self.cfg.auth_file),
                            columns=["name", "role", "disabled"])

    def user_action(self, action: str, name: str, password: str, role: str,
                    request: gr.Request) -> str:
        """add / role / disable / enable / reset on one user; the message says what
        happened."""
        admin = self.access.require_admin(request, "manage users")
        if not self.cfg.auth_file:
            raise fail("Users need an auth file: start the app with --auth-file users.json "
                       "(python app.py add-user NAME --role admin --auth-file users.json "
                       "creates it).")
        if action not in USER_ACTIONS:
            raise fail(f"unknown user action {action!r}: use one of {', '.join(USER_ACTIONS)}")
        name = (name or "").strip()
        if action in ("role", "disable") and name == admin:
            raise fail("You cannot demote or disable yourself: another admin can.")
        path = self.cfg.auth_file
        try:
            if action == "add":
                if name in {u["name"] for u in auth.list_users(path)}:
                    raise auth.AuthError(f"user {name!r} exists already: reset their "
                                         "password or change their role instead")
                auth.add_user(path, name, password or "", role or "annotator")
            elif action == "role":
                auth.set_role(path, name, role)
            elif action == "reset":
                auth.reset_password(path, name, password or "")
            else:
                auth.set_disabled(path, name, action == "disable")
        except auth.AuthError as e:
            raise fail(f"Not changed: {e}") from e
        detail = {"user": name, **({"role": role} if action in ("add", "role") else {})}
        self.store.audit(admin, f"user_{action}", **detail)
        return {"add": f"Added **{name}** ({role or 'annotator'}).",
                "role": f"**{name}** is now an {role}.",
                "disable": f"**{name}** is disabled: their next request is refused.",
                "enable": f"**{name}** can log in again.",
                "reset": f"**{name}** has a new password."}[action]
