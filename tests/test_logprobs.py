"""Response-only chunked log-probs against the full-logits oracle, on the tiny Gemma 3."""

import copy

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.model.logprobs import (
    _FrozenHeadLogps,
    body_head_softcap,
    build_batch,
    mean_logps,
    naive_sequence_logps,
    response_hidden,
    sequence_logps,
    token_kl,
)

PROMPTS = ["Question: What is the capital of France?\nAnswer:", "Question: hi\nAnswer:"]
RESPONSES = [" Paris is the capital.", " Plants turn light into sugar, water and air."]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def bos_tok(tok):
    """The same tokenizer, adding BOS to every text like Gemma's."""
    t = copy.deepcopy(tok)
    t._tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", t.bos_token_id)])
    assert t("hi")["input_ids"][0] == t.bos_token_id
    return t


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def batch(tok, prompts=PROMPTS, responses=RESPONSES, max_length=256):
    return build_batch(tok, prompts, responses, max_length, tok.pad_token_id)


def n_ids(tok, text, special=False):
    return len(tok(text, add_special_tokens=special)["input_ids"])


# ---------------------------------------------------------------- build_batch


@pytest.mark.parametrize("use_bos", [False, True])
def test_build_batch_masks_the_response_and_pads_dynamically(tok, bos_tok, use_bos):
    tk = bos_tok if use_bos else tok
    b = batch(tk)
    n_resp = [n_ids(tk, r) for r in RESPONSES]  # scored as given: nothing appended
    lens = [n_ids(tk, p, special=True) + n for p, n in zip(PROMPTS, n_resp)]
    assert b["input_ids"].shape == (2, max(lens))  # the longest row, not max_length
    assert b["attention_mask"].sum(-1).tolist() == lens
    assert b["response_mask"].sum(-1).tolist() == n_resp
    assert b["response_mask"].dtype == torch.bool
    for i in range(2):
        assert (b["input_ids"][i, lens[i]:] == tk.pad_token_id).all()
        assert not b["response_mask"][i, lens[i]:].any()
        first = lens[i] - n_resp[i]  # response starts right after the prompt
        assert b["response_mask"][i, first:lens[i]].all()
        assert not b["response_mask"][i, :first].any()
        assert (b["input_ids"][i, 0] == tk.bos_token_id) == use_bos
    # the row's response tokens are the response tokenised alone (no BOS)
    want = tk(RESPONSES[0], add_special_tokens=False)["input_ids"]
    assert b["input_ids"][0][b["response_mask"][0]].tolist() == want


def test_a_terminator_written_in_the_response_is_scored_as_its_token(tok):
    """Framed chat answers end with an end-of-turn marker: its id, not its characters."""
    b = batch(tok, PROMPTS[:1], [" Paris.<eos>"])
    resp = b["input_ids"][0][b["response_mask"][0]].tolist()
    assert resp[-1] == tok.eos_token_id
    assert resp[:-1] == tok(" Paris.", add_special_tokens=False)["input_ids"]


def test_truncation_cuts_the_prompt_from_the_left_first(tok):
    long_prompt = "Question: " + "word " * 50 + "\nAnswer:"
    b = batch(tok, [long_prompt], [" Paris."], max_length=12)
    n_resp = n_ids(tok, " Paris.")
    assert b["input_ids"].shape == (1, 12)
    assert int(b["response_mask"].sum()) == n_resp  # the response survived intact
    ids = tok(long_prompt)["input_ids"]
    assert b["input_ids"][0, :12 - n_resp].tolist() == ids[-(12 - n_resp):]  # its tail


def test_truncation_keeps_bos(bos_tok):
    long_prompt = "Question: " + "word " * 50 + "\nAnswer:"
    b = batch(bos_tok, [long_prompt], [" Paris."], max_length=12)
    n_resp = n_ids(bos_tok, " Paris.")
    ids = bos_tok(long_prompt)["input_ids"]
    kept = 12 - n_resp - 1
    assert b["input_ids"][0, 0] == bos_tok.bos_token_id
    assert b["input_ids"][0, 1:1 + kept].tolist() == ids[-kept:]
    assert int(b["response_mask"].sum()) == n_resp


@pytest.mark.parametrize("use_bos", [False, True])
def test_then_the_response_is_cut_from_the_right(tok, bos_tok, use_bos):
    tk = bos_tok if use_bos else tok
    resp = " a b c d e f g h i j k l m n o p"
    r_ids = tk(resp, add_special_tokens=False)["input_ids"]
    b = batch(tk, ["Question: what?"], [resp], max_length=6)
    ids, mask = b["input_ids"][0], b["response_mask"][0]
    assert ids.shape == (6,) and int(mask.sum()) == 5  # one prompt token (BOS or last)
    assert ids[mask].tolist() == r_ids[:5]  # the response's head
    assert ids[0] == (tk.bos_token_id if use_bos else tk("Question: what?")["input_ids"][-1])
    b = batch(tk, ["Question: what?"], [resp], max_length=2)  # the minimum
    assert b["input_ids"].shape == (1, 2) and int(b["response_mask"].sum()) == 1


def test_build_batch_rejects_bad_input(tok):
    with pytest.raises(ValueError, match="as many prompts as responses"):
        build_batch(tok, ["a", "b"], ["c"], 32, tok.pad_token_id)
    with pytest.raises(ValueError, match="max_length"):
        build_batch(tok, ["a"], ["c"], 1, tok.pad_token_id)


# ---------------------------------------------------------------- sequence_logps


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_chunked_equals_full_log_softmax(model, tok, chunk):
    b = batch(tok)
    with torch.no_grad():
        s, n = sequence_logps(model, **b, chunk_size=chunk)
        ws, wn = naive_sequence_logps(model, **b)
    assert s.shape == n.shape == (2,) and s.grad_fn is None
    torch.testing.assert_close(s, ws, atol=1e-5, rtol=1e-5)
    assert n.tolist() == wn.tolist() == b["response_mask"].sum(-1).tolist()
    torch.testing.assert_close(mean_logps(s, n), ws / wn)


def test_masks_give_weighted_sums_of_the_same_token_logps(model, tok):
    """Each mask's sum is the token log-probs times its weights at the response
    positions, from the same pass (checked against the full-logits oracle)."""
    b = batch(tok)
    weights = torch.zeros(b["response_mask"].shape)
    weights[b["response_mask"]] = torch.linspace(0.0, 2.0, int(b["response_mask"].sum()))
    ends = torch.zeros_like(b["response_mask"])
    ends[0, b["response_mask"][0].nonzero()[-1]] = True  # row 0's last token
    with torch.no_grad():
        s, n, w_sum, end_sum = sequence_logps(model, **b, chunk_size=3, masks=(weights, ends))
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        per_token = torch.log_softmax(logits[:, :-1].float(), -1).gather(
            -1, b["input_ids"][:, 1:, None]).squeeze(-1)  # (B, T-1)
    scored = b["response_mask"][:, 1:] & b["attention_mask"][:, :-1].bool()
    want = (per_token * weights[:, 1:] * scored).sum(-1)
    torch.testing.assert_close(w_sum, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(end_sum, (per_token * ends[:, 1:] * scored).sum(-1),
                               atol=1e-5, rtol=1e-5)
    assert end_sum[1] == 0 and end_sum[0] < 0


def test_padding_does_not_change_a_rows_logp(model, tok):
    with torch.no_grad():
        alone, _ = sequence_logps(model, **batch(tok, PROMPTS[:1], RESPONSES[:1]))
        both, _ = sequence_logps(model, **batch(tok))
        short, _ = sequence_logps(model, **batch(tok, PROMPTS[1:], RESPONSES[1:]))
    torch.testing.assert_close(alone[0], both[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(short[0], both[1], atol=1e-5, rtol=1e-5)


def _grads(model, fn, b, **kw):
    model.zero_grad()
    s, _ = fn(model, **b, **kw)
    (s * torch.tensor([1.0, -0.5])).sum().backward()  # rows weighted, as a loss would
    return s.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                        if p.requires_grad}


def _assert_same_grads(model, b, chunk):
    s, got = _grads(model, sequence_logps, b, chunk_size=chunk)
    ws, want = _grads(model, naive_sequence_logps, b)
    torch.testing.assert_close(s, ws, atol=1e-5, rtol=1e-5)
    assert got.keys() == want.keys() and got
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)
    return got


def _lora(tiny_model_dir, softcap=None):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base.config.final_logit_softcapping = softcap
    torch.manual_seed(0)  # init_lora_weights=False: B is random, so A gets gradients too
    return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear",
                                           init_lora_weights=False))


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_peft_lora_gradients_equal_the_full_logits_ones(tiny_model_dir, tok, softcap):
    peft_model = _lora(tiny_model_dir, softcap)
    grads = _assert_same_grads(peft_model, batch(tok), chunk=4)
    assert all("lora_" in n for n in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_lora_policy_pass_keeps_no_vocabulary_sized_tensor_for_backward(tiny_model_dir, tok):
    """The point of the chunking: autograd saves no (rows, V) logits for backward."""
    peft_model, b = _lora(tiny_model_dir), batch(tok)
    vocab = peft_model.get_output_embeddings().weight.shape[0]
    saved = []

    def pack(x):
        saved.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        s, _ = sequence_logps(peft_model, **b, chunk_size=4)
    assert saved and not [shape for shape in saved if vocab in shape]
    assert type(s.grad_fn).__name__ == "IndexAddBackward0"
    assert "_FrozenHeadLogps" in type(s.grad_fn.next_functions[1][0]).__name__
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        naive_sequence_logps(peft_model, **b)
    assert [shape for shape in saved if vocab in shape]  # the oracle does keep them


def test_trainable_head_gradients_equal_the_full_logits_ones(tiny_model_dir, tok):
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # everything trainable
    grads = _assert_same_grads(full, batch(tok), chunk=5)
    assert grads["model.embed_tokens.weight"].abs().sum() > 0  # tied LM head


def test_softcap_is_applied(tiny_model_dir, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    b = batch(tok)
    with torch.no_grad():
        plain, _ = sequence_logps(model, **b)
        model.config.final_logit_softcapping = 0.5
        capped, _ = sequence_logps(model, **b, chunk_size=3)
        want, _ = naive_sequence_logps(model, **b)
    torch.testing.assert_close(capped, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(capped, plain)


def test_reference_pass_through_disabled_adapter_matches_the_base(tiny_model_dir, tok):
    peft_model, b = _lora(tiny_model_dir), batch(tok)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        with peft_model.disable_adapter():
            ref, _ = sequence_logps(peft_model, **b)
        want, _ = sequence_logps(base, **b)
        tuned, _ = sequence_logps(peft_model, **b)
    torch.testing.assert_close(ref, want)
    assert not torch.allclose(tuned, want)


@pytest.mark.parametrize("softcap,bias", [(None, False), (1.5, True)])
def test_frozen_head_function_gradcheck(softcap, bias):
    torch.manual_seed(0)
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 4, dtype=torch.float64)
    b = torch.randn(11, dtype=torch.float64) if bias else None
    targets = torch.randint(0, 11, (5,))
    assert torch.autograd.gradcheck(
        lambda x: _FrozenHeadLogps.apply(x, w, b, targets, softcap, 2), (h,))


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_token_kl_equals_the_full_logits_kl_and_is_zero_for_one_model(model, tok, chunk):
    """Exact per-position KL(p || q) against torch's KL on full logits of two models."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = batch(tok)
    with torch.no_grad():
        h_p, rows = response_hidden(model, **b)
        h_q, _ = response_hidden(other, **b)
        _, head_p, cap = body_head_softcap(model)
        kl = token_kl(head_p, h_p, h_q, cap, chunk)
        # The oracle: full logits of both models at the response-predicting positions.
        lp = torch.log_softmax(model(**{k: b[k] for k in ("input_ids", "attention_mask")})
                               .logits[:, :-1].float(), -1)  # (B, T-1, V)
        # other's hidden rows through model's head: the same thing token_kl computes
        lq = torch.log_softmax(head_p(other.get_decoder()(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0])[:, :-1]
            .float(), -1)  # (B, T-1, V)
        mask = b["response_mask"][:, 1:] & b["attention_mask"][:, :-1].bool()
        want = torch.nn.functional.kl_div(lq[mask], lp[mask], log_target=True,
                                          reduction="none").sum(-1)  # (R,)
        same = token_kl(head_p, h_p, h_p, cap, chunk)
    assert kl.shape == (int(mask.sum()),) and rows.shape == kl.shape
    torch.testing.assert_close(kl, want, atol=1e-5, rtol=1e-4)
    assert (kl > 0).all()
    assert same.abs().max() < 1e-6


def test_ending_mask_marks_the_last_tokens_of_whole_responses_only():
    from trainer.model.logprobs import ending_mask
    resp = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]).bool()
    mask = ending_mask(resp, lengths=[4, 6, 2], endings=[2, 1, 1])
    assert mask[0].tolist() == [False, False, False, True, True, False]
    assert not mask[1].any()  # 4 of its 6 response tokens survived max_length: no ending
    assert mask[2].tolist() == [False, False, True, False, False, False]
    assert not ending_mask(resp, [4, 4, 2], [0, 0, 2]).any()  # none, or all of it: nothing
