"""Who is calling and what they may do: the login's name and its role in the users file.

Read on the server for every call (a removed, disabled or demoted user loses rights at
once, even on a session that is already open).
Without an auth file the app runs in local single-user mode: the caller is ``local``,
an admin.
"""

from __future__ import annotations

import gradio as gr

from app import auth
from app.inputs import fail

LOCAL_USER = "local"


class Access:
    """The caller's name and role, from the login and the users file (read per call)."""

    def __init__(self, auth_file: str = "") -> None:
        self.auth_file = auth_file

    @property
    def local_mode(self) -> bool:
        return not self.auth_file

    def user(self, request: gr.Request | None) -> str:
        if self.local_mode:
            return LOCAL_USER
        name = getattr(request, "username", None)
        if not name:
            raise fail("You are not logged in: reload the page and log in again.")
        record = auth.load_users(self.auth_file).get(name)
        if record is None:
            raise fail(f"The account {name!r} is not in the users file: nothing was done. "
                       f"An admin can add it (python app.py add-user {name} --role "
                       "annotator).")
        if record.get("disabled"):
            raise fail(f"The account {name!r} is disabled: nothing was done. Ask an admin "
                       "to enable it.")
        return name

    def role(self, name: str) -> str | None:
        return "admin" if self.local_mode else auth.role_of(auth.load_users(self.auth_file),
                                                            name)

    def is_admin(self, request: gr.Request | None) -> bool:
        return self.role(self.user(request)) == "admin"

    def require_admin(self, request: gr.Request | None, action: str) -> str:
        """The caller's name if they are an admin; else a clear refusal naming them."""
        name = self.user(request)
        role = self.role(name)
        if role != "admin":
            what = f"is an {role}" if role else "is not in the users file"
            raise fail(f"Only admins may {action}; {name!r} {what}. An admin can run "
                       f"`python app.py add-user {name} --role admin`.")
        return name
