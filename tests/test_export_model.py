"""export-model: an adapter version merged into its base, a standalone HF checkpoint."""

import json

import pytest
import torch

from app.cli import main
from tests.svc_fixtures import tiny_service, vote_all
from trainer.model.policy import BASE

PROMPT = "Name three colours of the rainbow."
LOGIT_TOL = 1e-4  # fp32 on CPU: merged W + (alpha / r) B A vs the adapter applied on the fly


def _trained(tmp_path, tiny_model_dir, *flags):
    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--accept-tolerance", "1",
                       "--health-samples", "0", *flags)
    svc.pool.fill_once(8)
    vote_all(svc)
    out = svc.trainer.run_one("test")
    assert out.version == "v1", out.error
    return svc


def _greedy(model, ids: torch.Tensor, n: int = 32) -> tuple[list[int], torch.Tensor]:
    """n greedy tokens after ids (1, T), and the logits at every step (n, V)."""
    out, logits = ids, []
    with torch.no_grad():
        for _ in range(n):
            last = model(input_ids=out).logits[0, -1].float()
            logits.append(last)
            out = torch.cat([out, last.argmax().view(1, 1)], dim=1)
    return out[0, ids.shape[1]:].tolist(), torch.stack(logits)


def _prompt_ids(svc) -> torch.Tensor:
    tok = svc.policy.tokenizer
    return torch.tensor([tok(svc.sampler.format(PROMPT))["input_ids"]])


@pytest.mark.slow
def test_merged_checkpoint_answers_like_the_serving_adapter(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    svc = _trained(tmp_path, tiny_model_dir)
    out = tmp_path / "merged"
    rc = main(["export-model", "--data-dir", str(tmp_path / "data"), "--model",
               str(tiny_model_dir), "--version", "v1", "--out", str(out)])
    assert rc == 0
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert AutoTokenizer.from_pretrained(out)(PROMPT)["input_ids"]
    ids = _prompt_ids(svc)
    with svc.policy.active("v1"):
        want_tokens, want = _greedy(svc.policy.model, ids)
    got_tokens, got = _greedy(merged, ids)
    assert got_tokens == want_tokens
    assert (got - want).abs().max().item() < LOGIT_TOL
    with svc.policy.active(BASE):
        _, base = _greedy(svc.policy.model, ids, 1)
    assert (got[0] - base[0]).abs().max().item() > 100 * LOGIT_TOL  # the adapter is in it
    card = (out / "README.md").read_text()
    assert "v1 <- base" in card and str(tiny_model_dir) in card and "| loss |" in card
    assert not list(tmp_path.glob(".merged.*"))  # no temp dir left behind
    svc.stop()


def test_export_model_refuses_bad_requests(tmp_path, tiny_model_dir, capsys):
    svc = tiny_service(tmp_path / "data", tiny_model_dir)
    svc.stop()
    argv = ["export-model", "--data-dir", str(tmp_path / "data"), "--model",
            str(tiny_model_dir), "--out", str(tmp_path / "out")]
    assert main([*argv, "--version", "v7"]) == 2
    assert "no such trained version" in capsys.readouterr().err


@pytest.mark.slow
def test_existing_out_dir_is_never_overwritten_and_4bit_base_merges_in_bf16(
        tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    svc = _trained(tmp_path, tiny_model_dir, "--quantize", "4bit")
    argv = ["export-model", "--data-dir", str(tmp_path / "data"), "--model",
            str(tiny_model_dir), "--quantize", "4bit", "--version", "v1", "--out"]
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main([*argv, str(taken)]) == 2
    assert (taken / "keep.txt").read_text() == "mine"
    out = tmp_path / "merged"
    assert main([*argv, str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config.get("dtype") == "bfloat16"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert next(merged.parameters()).dtype == torch.bfloat16
    ids = _prompt_ids(svc)
    with svc.policy.active("v1"):
        _, want = _greedy(svc.policy.model, ids, 4)
    _, got = _greedy(merged, ids, 4)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() < 0.05 * scale  # bf16 weights, NF4 de-quantised
    svc.stop()
