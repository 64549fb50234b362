"""Integration: the product's default model, the embedded Gemma 3 270M, end to end.

Converts the packaged GGUF once into the user cache (~/.cache/livedpo, reused by later
runs) and samples a real pair with the plain template.
"""

from pathlib import Path

import pytest

from trainer.config import DEFAULT_MODEL, ModelConfig, SamplingConfig, default_cache_dir
from trainer.model.generate import Sampler
from trainer.model.modelcache import CONVERTED_NAME, resolve_model
from trainer.model.policy import BASE, Policy

pytestmark = [pytest.mark.gemma, pytest.mark.slow]


@pytest.fixture(scope="module")
def gemma_policy():
    return Policy.load(ModelConfig(model=DEFAULT_MODEL, cache_dir=default_cache_dir()))


def test_default_model_converts_to_a_plain_trainable_checkpoint(gemma_policy):
    path = Path(resolve_model(DEFAULT_MODEL, default_cache_dir()))
    assert path.name == CONVERTED_NAME
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    base = gemma_policy.model.get_base_model()
    assert getattr(base, "hf_quantizer", None) is None  # not flagged as GGUF-quantised
    assert base.config.vocab_size == 262144
    assert gemma_policy.tokenizer.chat_template is None  # a base model: plain template
    assert len(gemma_policy.train_parameters()) > 0


def test_default_model_generates_a_pair(gemma_policy):
    sampler = Sampler(gemma_policy, SamplingConfig(max_new_tokens=24))
    a, b = sampler.sample(["What is the capital of France?"] * 2, BASE, seed=0)
    for s in (a, b):
        assert s.text and "<start_of_image>" not in s.text and "Question:" not in s.text
    assert a.text != b.text
