"""The web app's own settings: where data lives and how the page is served.

Built like the model-side areas (trainer/config.py): defaults < ``LIVEDPO_*`` environment
< flags, validated in one ``ValueError``. ``AREAS`` is every config area by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.common import MAX_PROMPT_CHARS
from trainer.config import MODEL_AREAS, choice_problems, setting


@dataclass(frozen=True)
class AppConfig:
    """Where data lives and how the web app is served."""

    data_dir: str = setting("./data", "Directory of the SQLite DB and adapter versions.")
    host: str = setting("127.0.0.1", "Address the web app listens on.")
    port: int = setting(7860, "Port the web app listens on.")
    auth_file: str = setting("", "Users file (add-user writes it); empty = local single-user mode, "
                             "where the one user is an admin (refused on a non-loopback "
                             "--host unless --no-auth).")
    no_auth: bool = setting(False, "Serve on a non-loopback --host without an auth file: "
                            "everyone who can reach the port is an admin (rollback, "
                            "settings, imports, downloads).")
    guidelines_file: str = setting("", "Markdown file replacing the default annotation guidelines.")
    max_prompt_chars: int = setting(MAX_PROMPT_CHARS, "Longest prompt accepted, in characters.")

    def problems(self) -> list[str]:
        out = choice_problems(self)
        if not 0 < self.port < 65536:
            out.append(f"port={self.port}: must be in 1..65535")
        if self.max_prompt_chars < 1:
            out.append(f"max_prompt_chars={self.max_prompt_chars}: must be >= 1")
        return out


AREAS = {**MODEL_AREAS, "app": AppConfig}
