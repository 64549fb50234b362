"""Shared fixtures. Tests never download: tiny models are built from a config."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Keep the user's environment from leaking into tests.
for _k in [k for k in os.environ if k.startswith("LIVEDPO_")]:
    del os.environ[_k]

import pytest  # noqa: E402

from trainer.testing import make_tiny_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer random Gemma 3 text model with a plain (no chat template) tokenizer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-plain"), chat=False)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory):
    """The same tiny model with a tokenizer that has a chat template."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-chat"), chat=True)


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dir):
    """A Policy (base + LoRA draft) on the tiny plain model, fp32 on CPU."""
    from trainer.config import ModelConfig
    from trainer.model.policy import Policy

    return Policy.load(ModelConfig(model=str(tiny_model_dir)))


@pytest.fixture
def svc(tmp_path, tiny_model_dir):
    """The real service on the tiny model in a fresh data dir, loaded, no threads (pairs,
    votes and rounds are made on demand). The acceptance gate is open: the tiny random
    model's held-out accuracy is noise. Modules that need another service override it."""
    from tests.svc_fixtures import tiny_service

    s = tiny_service(tmp_path / "data", tiny_model_dir, "--accept-tolerance", "1")
    yield s
    s.stop()
