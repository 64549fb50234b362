import pytest
import torch
from transformers import AutoTokenizer

from trainer.config import SamplingConfig
from trainer.model.decode import filter_top_k_top_p
from trainer.model.generate import (
    PLAIN_STOPS,
    Sample,
    Sampler,
    answer_end,
    clean_response,
    cut_prompt,
    format_prompt,
    frame_response,
    left_pad,
    response_frame,
    stop_token_ids,
    suppressed_token_ids,
    turn_tail,
)


@pytest.fixture(scope="module")
def plain_tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def chat_tok(tiny_chat_model_dir):
    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


def test_plain_template_when_no_chat_template(plain_tok):
    assert format_prompt(plain_tok, "  Why is the sky blue? ") == (
        "Question: Why is the sky blue?\nAnswer:")
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(plain_tok, "hi", "chat")


def test_chat_template_used_when_present(chat_tok):
    assert format_prompt(chat_tok, "hi") == "<|user|>hi<|end|><|assistant|>"
    assert format_prompt(chat_tok, "hi", "plain") == "Question: hi\nAnswer:"


def test_stop_and_suppressed_tokens(chat_tok):
    stops = stop_token_ids(chat_tok)
    assert chat_tok.eos_token_id in stops
    assert chat_tok.convert_tokens_to_ids("<|end|>") in stops  # end-of-turn marker stops
    banned = suppressed_token_ids(chat_tok)
    assert chat_tok.pad_token_id in banned and chat_tok.bos_token_id in banned
    assert not set(stops) & set(banned)


def test_clean_response_cuts_at_stop_strings():
    assert clean_response(" Paris.\nQuestion: next?", PLAIN_STOPS) == "Paris."
    assert clean_response("a\nAnswer: b", PLAIN_STOPS) == "a"
    assert clean_response("  fine  ", PLAIN_STOPS) == "fine"


def test_plain_answers_are_scored_as_generation_wrote_them(plain_tok):
    """A typical base-model continuation, cleaned for storage then framed for scoring,
    gives back the generated text up to and including the stop string."""
    raw = " Paris is the capital.\nQuestion: and Spain?"
    frame = response_frame(plain_tok)
    assert frame == (" ", PLAIN_STOPS[0])
    assert raw.startswith(frame_response(clean_response(raw, PLAIN_STOPS), frame))
    assert frame_response("Paris.", frame) == " Paris.\nQuestion:"
    assert frame_response("Paris is the", frame, "") == " Paris is the"  # cut
    assert frame_response("Paris.", frame, "<eos>") == " Paris.<eos>"  # ended with EOS


def test_answer_end_is_what_generation_ended_with():
    stops = PLAIN_STOPS
    assert answer_end(" Paris.\nAnswer: x\nQuestion: y", stops, None, True) == "\nAnswer:"
    assert answer_end(" Paris.", stops, "<eos>", True) == "<eos>"
    assert answer_end(" Paris is the capital of", stops, None, False) == ""  # cut
    assert answer_end(" Paris.", stops, None, True) is None  # ended, unknown how


def test_chat_answers_end_with_the_turn_marker_generation_stops_on(chat_tok):
    frame = response_frame(chat_tok)
    assert frame == ("", "<|end|>")
    ids = chat_tok(frame_response("hi there", frame), add_special_tokens=False)["input_ids"]
    assert ids[-1] in stop_token_ids(chat_tok)
    assert response_frame(chat_tok, "plain") == (" ", PLAIN_STOPS[0])


def test_turn_tail_is_what_the_template_writes_after_an_ended_turn(chat_tok):
    import copy

    assert turn_tail(chat_tok) == ""  # this template writes nothing after <|end|>
    assert turn_tail(chat_tok, "plain") == ""
    chatml = copy.deepcopy(chat_tok)
    chatml.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>\n"
                            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert turn_tail(chatml) == "\n"
    frame = response_frame(chatml)
    assert frame_response("hi", frame, None, "\n") == "hi<|end|>\n"  # ended: the tail too
    assert frame_response("hi", frame, "<|end|>", "\n") == "hi<|end|>\n"
    assert frame_response("hi", frame, "", "\n") == "hi"  # cut: no end, no tail


def test_top_k_top_p_keeps_the_nucleus_only():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    vals, idx = filter_top_k_top_p(scores, top_k=3, top_p=0.8)
    assert idx.tolist() == [[0, 1, 2]]  # top-k first
    assert torch.isfinite(vals)[0].tolist() == [True, True, False]  # 0.5 + 0.3 reaches 0.8
    vals, _ = filter_top_k_top_p(scores, top_k=4, top_p=1e-6)
    assert torch.isfinite(vals).sum() == 1  # always keeps the best token


def test_sampler_batches_and_seeds(tiny_policy):
    s = Sampler(tiny_policy, SamplingConfig(max_new_tokens=6))
    a = s.sample(["hello", "world", "hello"], "base", seed=3)
    b = s.sample(["hello", "world", "hello"], "base", seed=3)
    assert len(a) == 3 and [x.text for x in a] == [x.text for x in b]  # seed reproduces
    assert all(1 <= x.n_tokens <= 6 for x in a)
    assert s.last_stats["rows"] == 3 and s.last_stats["tokens_per_s"] > 0


def test_a_stopping_sampler_ends_its_decode_loop_within_a_step(tiny_policy, monkeypatch):
    """Service.stop sets ``stopping``: the loop raises before its next forward pass
    instead of finishing the batch."""
    from trainer.model.decode import SamplingAborted

    s = Sampler(tiny_policy, SamplingConfig(max_new_tokens=50, empty_retries=0))
    model, calls = tiny_policy.model, []
    real_forward = model.forward

    def counting(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            s.stopping.set()
        return real_forward(*a, **k)

    monkeypatch.setattr(model, "forward", counting)
    with pytest.raises(SamplingAborted, match="after 3 of 50 tokens"):
        s.sample(["hello", "world"], "base", seed=0)
    assert len(calls) == 3
    with pytest.raises(SamplingAborted, match="after 0 of 50"):  # stays stopped
        s.sample(["hello"], "base", seed=0)


def test_samples_keep_the_tokens_the_model_saw_and_wrote(tiny_policy):
    s = Sampler(tiny_policy, SamplingConfig(max_new_tokens=6, max_prompt_tokens=8))
    tok = tiny_policy.tokenizer
    long_prompt = "tell me about the sea and the waves and the wind"
    for x in s.sample(["hello", long_prompt], "base", seed=4):
        if not x.text:
            assert x.token_ids is None and x.prompt_ids is None
            continue
        assert len(x.token_ids) == x.n_tokens
        assert x.text in tok.decode(list(x.token_ids), skip_special_tokens=True)
        assert 1 <= len(x.prompt_ids) <= 8  # cut to max_prompt_tokens, as the model saw it
    assert cut_prompt([1, 2, 3, 4, 5], 3, bos_id=1) == [1, 4, 5]  # a leading BOS stays
    assert cut_prompt([9, 2, 3, 4, 5], 3, bos_id=1) == [3, 4, 5]
    assert cut_prompt([9, 2], 3, bos_id=1) == [9, 2]


class _StopsAtOnceFirst(Sampler):
    """The real sampler, except that its first loop's odd rows come out empty, as when
    a policy learned to stop at once; records which prompts each loop got."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[list[str]] = []

    def _sample_once(self, prompts, version, seed):
        out = super()._sample_once(prompts, version, seed)
        self.calls.append(list(prompts))
        if len(self.calls) == 1:
            out = [Sample("", 1) if i % 2 else s for i, s in enumerate(out)]
        return out


def test_empty_answers_are_sampled_again(tiny_policy):
    prompts = ["p0", "p1", "p2", "p3"]
    cfg = SamplingConfig(max_new_tokens=6, empty_retries=2)
    s = _StopsAtOnceFirst(tiny_policy, cfg)
    out = s.sample(prompts, "base", seed=1)
    assert s.calls[1] == ["p1", "p3"]  # only the empty rows, in one batch
    plain = Sampler(tiny_policy, cfg)
    first = plain._sample_once(prompts, "base", 1)
    retry = plain._sample_once(["p1", "p3"], "base", 1 + 7919)
    assert [out[0], out[2]] == [first[0], first[2]]  # answered rows are kept
    assert all(x.text for x in retry)  # the real model answers on the retry...
    assert [out[1], out[3]] == retry and len(s.calls) == 2  # ...so no third loop
    assert s.last_stats["empty"] == sum(not x.text for x in out)

    kept = _StopsAtOnceFirst(tiny_policy, SamplingConfig(max_new_tokens=6, empty_retries=0))
    out = kept.sample(prompts, "base", seed=1)
    assert len(kept.calls) == 1 and out[1].text == "" and kept.last_stats["empty"] >= 2


def test_left_pad_cuts_from_the_left_and_keeps_bos():
    ids, mask = left_pad([[2, 5, 6, 7, 8], [2, 9]], max_tokens=3, pad_id=0, bos_id=2)
    assert ids.tolist() == [[2, 7, 8], [0, 2, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    ids, _ = left_pad([[5, 6, 7, 8]], max_tokens=2, pad_id=0, bos_id=2)
    assert ids.tolist() == [[7, 8]]


def test_sampling_leaves_the_shared_tokenizer_alone(tiny_policy):
    """Padding/truncation switched on in the Rust tokenizer by one thread and off by
    another ('Already borrowed' under load): sampling must not switch them at all."""
    backend = tiny_policy.tokenizer._tokenizer
    Sampler(tiny_policy, SamplingConfig(max_new_tokens=3)).sample(["a", "longer one"], "base", 0)
    assert backend.padding is None and backend.truncation is None


def test_sampling_and_scoring_threads_share_the_tokenizer(tiny_policy):
    import threading

    from trainer.model.logprobs import build_batch

    tok, errors = tiny_policy.tokenizer, []
    s = Sampler(tiny_policy, SamplingConfig(max_new_tokens=2))

    def score_loop():
        try:
            for _ in range(200):
                build_batch(tok, ["a prompt"] * 4, [" an answer"] * 4, 64, tok.pad_token_id)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=score_loop)
    t.start()
    for i in range(20):
        s.sample(["hello", "a much longer prompt than that"], "base", i)
    t.join()
    assert errors == []
