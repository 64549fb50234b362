"""The Data and Team tabs' handlers (admins only): counts and recent votes, exports, the
serving adapter and the merged model as downloads, prompt imports; agreement. Mixed into ``Handlers``
(app/api.py), whose ``access``, ``store``, ``svc`` and ``cfg`` they use."""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from app import teamviews, views
from app.inputs import fail, upload_path

EXPORTS = {"dpo": "livedpo-dpo.jsonl", "kto": "livedpo-kto.jsonl", "votes": "livedpo-votes.csv",
           "audit": "livedpo-audit.jsonl"}


class DataHandlers:
    def team_view(self, request: gr.Request) -> tuple:
        """The Team tab: agreement for the team, per annotator and per pair of them, and
        the disputed pairs waiting for a decision."""
        self.access.require_admin(request, "see the team tab")
        summary = self.store.agreement()
        return (teamviews.team_markdown(summary), *teamviews.team_frames(summary),
                teamviews.disputes_frame(self.store.disagreements()))

    def adjudicate(self, pair_id: float | None, label: str | None,
                   request: gr.Request) -> str:
        """An admin's decision on a disputed pair: its label for training and export."""
        admin = self.access.require_admin(request, "decide disputed pairs")
        if pair_id is None or not label:
            raise fail("Enter the pair id from the table and choose the label, then decide.")
        choice = teamviews.ADJUDICATION_CHOICES.get(label, label)
        try:
            self.store.adjudicate(int(pair_id), choice, admin)
        except self._user_errors as e:
            raise fail(f"Not decided: {e}") from e
        self.store.audit(admin, "adjudicate", pair_id=int(pair_id), choice=choice)
        return (f"Pair {int(pair_id)} decided by **{admin}**: "
                f"{views.CHOICE_LABELS[choice]}. Training and exports use it from now on.")

    def data_view(self, request: gr.Request) -> tuple:
        self.access.require_admin(request, "see the data tab")
        return (views.counts_markdown(self.store.counts()),
                views.votes_frame(self.store.recent_votes(50)))

    def export(self, fmt: str, request: gr.Request) -> str:
        """Write an export to a fresh temp dir and return its path (for gr.File)."""
        self.access.require_admin(request, "download data")
        if fmt not in EXPORTS:
            raise fail(f"export format {fmt!r} is not valid: use one of {', '.join(EXPORTS)}.")
        from storage.io import export

        out = Path(tempfile.mkdtemp(prefix="livedpo-export-")) / EXPORTS[fmt]
        export(self.store, fmt, out)
        return str(out)

    def _serving(self, missing: str) -> tuple[str, dict]:
        """(serving version, its adapter row); a clear refusal while base serves."""
        version = self.store.serving_adapter()
        row = self.store.get_adapter(version) if version != "base" else None
        if not row:
            raise fail(f"The serving version is 'base': there is {missing} yet. Train (or "
                       "import) a version first.")
        return version, row

    def download_adapter(self, request: gr.Request) -> str:
        self.access.require_admin(request, "download the adapter")
        from storage.files import zip_dir

        version, row = self._serving("no adapter to download")
        out = Path(tempfile.mkdtemp(prefix="livedpo-")) / f"livedpo-adapter-{version}.zip"
        return str(zip_dir(Path(row["path"]), out))

    def download_merged(self, request: gr.Request, progress=gr.Progress()) -> str:  # noqa: B008
        """The serving version merged into the base weights (``export-model``), zipped."""
        self.access.require_admin(request, "download the merged model")
        from app.modelcard import card_facts, render_card
        from storage.files import zip_dir

        version, _ = self._serving("nothing to merge")
        card = render_card(card_facts(self.store, version, self.svc.model_cfg.model))
        tmp = Path(tempfile.mkdtemp(prefix="livedpo-"))
        out = self.svc.export_merged(version, tmp / f"livedpo-model-{version}", card,
                                     _GradioProgress(progress))
        return str(zip_dir(out, tmp / f"livedpo-model-{version}.zip"))

    def import_prompts(self, path: str | None, request: gr.Request) -> str:
        admin = self.access.require_admin(request, "import prompts")
        if not path:
            raise fail("Choose a prompts file first (.txt: one per line, .jsonl with a "
                        "'prompt' field, or .csv with a 'prompt' column).")
        from storage.io import import_prompts

        real = upload_path(path)
        try:
            n = import_prompts(self.store, real, max_chars=self.cfg.max_prompt_chars)
        except self._user_errors as e:
            raise fail(f"Nothing imported from {Path(path).name}: {e}") from e
        self.store.audit(admin, "import_prompts", file=Path(path).name, new_prompts=n)
        return f"Imported {n} new prompt(s) from {Path(path).name}."


class _GradioProgress:
    """``trainer.progress.Progress`` onto a Gradio progress bar."""

    def __init__(self, progress: gr.Progress) -> None:
        self._progress = progress

    def update(self, done: float, total: float, desc: str) -> None:
        self._progress((done, total), desc=desc)
