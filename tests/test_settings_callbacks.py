"""Admin settings and rollback callbacks as plain functions on the real service (tiny
model): every bad value named, nothing saved; free text trimmed; clear refusals."""

from __future__ import annotations

import gradio as gr
import pytest

from app import views
from app.api import Handlers, help_table
from app.config import AppConfig
from tests.ui_fixtures import request

LOCAL = AppConfig()  # no auth file: local single-user mode, the caller is 'local', an admin
ME = request(None)


def test_settings_and_rollback_errors(svc):
    h = Handlers(svc, LOCAL)
    before = svc.settings()
    specs = views.settings_specs(before, help_table())
    at = {s["name"]: i for i, s in enumerate(specs)}
    values = [s["value"] for s in specs]
    assert h.save_settings(specs, values, ME) == {}
    bad = values[:]
    bad[at["beta"]], bad[at["top_p"]] = -1.0, 2.0
    with pytest.raises(gr.Error, match="Settings not saved. Invalid settings") as err:
        h.save_settings(specs, bad, ME)
    assert "beta=-1.0" in str(err.value) and "top_p=2.0" in str(err.value)
    bad = values[:]
    bad[at["epochs"]], bad[at["temperature"]] = 2.5, None
    with pytest.raises(gr.Error, match="Settings not saved:") as err:
        h.save_settings(specs, bad, ME)
    assert "train.epochs=2.5" in str(err.value) and "sampling.temperature is empty" in str(
        err.value)
    assert svc.settings() == before
    values[at["beta"]] = 0.3
    assert h.save_settings(specs, values, ME) == {"train": {"beta": 0.3}}
    values[at["system_prompt"]] = "  Answer in one sentence.\n"  # free text: may be empty
    assert h.save_settings(specs, values, ME) == {
        "sampling": {"system_prompt": "Answer in one sentence."}}
    assert svc.sampler.format("Hi").startswith("Answer in one sentence.\n\nQuestion: Hi")
    values[at["system_prompt"]] = ""
    assert h.save_settings(specs, values, ME) == {"sampling": {"system_prompt": ""}}
    assert svc.train_cfg.beta == 0.3 and svc.store.get_state("settings")["train"]["beta"] == 0.3
    with pytest.raises(gr.Error, match="Cannot roll back to 'v9'.*one of: none"):
        h.rollback("v9", ME)
    with pytest.raises(gr.Error, match="there is no adapter to download"):
        h.download_adapter(ME)
    with pytest.raises(gr.Error, match="export format 'xml' is not valid"):
        h.export("xml", ME)
    with pytest.raises(gr.Error, match="Choose a prompts file first"):
        h.import_prompts(None, ME)
