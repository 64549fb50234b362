import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.logprobs import build_batch, mean_logps, naive_sequence_logps, sequence_logps


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


PROMPTS = ["Question: What is the capital of France?\nAnswer:", "Question: hi\nAnswer:"]
RESPONSES = [" Paris is the capital.", " Plants turn light into sugar, water and air."]


def test_build_batch_masks_and_dynamic_padding(tok):
    b = build_batch(tok, PROMPTS, RESPONSES, 256, tok.pad_token_id)
    lens = [len(tok(p)["input_ids"]) + len(tok(r, add_special_tokens=False)["input_ids"]) + 1
            for p, r in zip(PROMPTS, RESPONSES)]
    assert b["input_ids"].shape == (2, max(lens))  # padded to the longest row only
    assert b["attention_mask"].sum(-1).tolist() == lens
    for i, r in enumerate(RESPONSES):
        n_resp = len(tok(r, add_special_tokens=False)["input_ids"]) + 1
        assert int(b["response_mask"][i].sum()) == n_resp
        last = lens[i] - 1
        assert b["input_ids"][i, last] == tok.eos_token_id and b["response_mask"][i, last]


def test_truncation_cuts_prompt_from_the_left_first(tok):
    long_prompt = "Question: " + "word " * 50 + "\nAnswer:"
    b = build_batch(tok, [long_prompt], [" Paris."], 12, tok.pad_token_id)
    assert b["input_ids"].shape[1] == 12
    n_resp = len(tok(" Paris.", add_special_tokens=False)["input_ids"]) + 1
    assert int(b["response_mask"].sum()) == n_resp  # the response survived intact
    ids = tok(long_prompt)["input_ids"]
    assert b["input_ids"][0, : 12 - n_resp].tolist() == ids[-(12 - n_resp):]  # left cut
    b = build_batch(tok, ["Q"], [" a b c d e f g h i j k l m n o p"], 6, tok.pad_token_id)
    assert b["input_ids"].shape[1] == 6 and int(b["response_mask"].sum()) >= 1


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_chunked_equals_full_log_softmax(model, tok, chunk):
    b = build_batch(tok, PROMPTS, RESPONSES, 256, tok.pad_token_id)
    with torch.no_grad():
        s, n = sequence_logps(model, **b, chunk_size=chunk)
        ws, wn = naive_sequence_logps(model, **b)
    torch.testing.assert_close(s, ws, atol=1e-5, rtol=1e-5)
    assert n.tolist() == wn.tolist()
    torch.testing.assert_close(mean_logps(s, n), ws / wn)


def test_padding_does_not_change_a_rows_logp(model, tok):
    alone = build_batch(tok, PROMPTS[:1], RESPONSES[:1], 256, tok.pad_token_id)
    both = build_batch(tok, PROMPTS, RESPONSES, 256, tok.pad_token_id)
    with torch.no_grad():
        a, _ = sequence_logps(model, **alone)
        b, _ = sequence_logps(model, **both)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)


def test_gradients_reach_lora_weights_through_peft(tiny_model_dir, tok):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    b = build_batch(tok, PROMPTS, RESPONSES, 256, tok.pad_token_id)
    s, _ = sequence_logps(peft_model, **b, chunk_size=4)
    s.sum().backward()
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    # LoRA B starts at zero, so the first gradient lands on B (A's is B^T-scaled, zero)
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert all(p.grad.abs().sum() > 0 for p in lora_b)
