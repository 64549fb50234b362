"""Prompt templates and batched sampling from the policy.

The default model is a BASE model with no chat template, so prompts use a documented
plain template, ``Question: {prompt}\\nAnswer:``; a model whose tokenizer has a chat
template gets that instead. Sampling is batched: many (prompt, sample) rows in ONE
left-padded decode loop (trainer/model/decode.py), which on a CPU is several times faster
per token than one prompt at a time (see bench/generation.py).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from storage import conversation
from trainer.config import SamplingConfig
from trainer.model.decode import sample_batch

PLAIN_TEMPLATE = "Question: {prompt}\nAnswer:"
PLAIN_STOPS = ("\nQuestion:", "\nAnswer:")
# Gemma's multimodal markers are not flagged special after GGUF conversion, yet sampling
# emits them: never let the model produce them.
_MEDIA_MARKER = re.compile(r"^(<(start|end)_of_(image|audio|video)>|\[multimodal\])$")
_TURN_END = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")


@dataclass(frozen=True)
class Sample:
    text: str
    n_tokens: int
    finished: bool = True  # ended by a stop string or EOS, not by running out of tokens
    end: str | None = None  # what it ended with ("<eos>", "\nQuestion:"...); None: unknown
    prompt_ids: tuple[int, ...] | None = None  # the prompt's tokens as the model saw them
    token_ids: tuple[int, ...] | None = None  # the answer's tokens as sampled, stop included

    @property
    def scored_end(self) -> str | None:
        """The end to score it with (``frame_response``): '' if it was cut."""
        return self.end if self.finished else ""


def uses_chat_template(tokenizer, template: str) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has:
        raise ValueError("--template chat: this model's tokenizer has no chat template. "
                         "Use --template plain (or auto).")
    return has and template != "plain"


def format_prompt(tokenizer, prompt: str, template: str = "auto",
                  system_prompt: str = "") -> str:
    """The text the model is conditioned on for a stored prompt: one user turn, or a
    conversation (storage/conversation.py); ``system_prompt`` is put first when the
    prompt has no system turn. A chat model gets its own chat template; a model without
    one gets ``conversation.plain_text`` (``Question: ...\nAnswer:`` for one turn)."""
    messages = conversation.messages_of(prompt, system_prompt)
    if uses_chat_template(tokenizer, template):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - templates raise anything (jinja errors)
            raise ValueError(f"the model's chat template refused this conversation "
                             f"({type(e).__name__}: {e}); templates without a system role "
                             "need prompts without one (and no --system-prompt)") from e
    return conversation.plain_text(messages)


def response_frame(tokenizer, template: str = "auto") -> tuple[str, str]:
    """(lead, end): the text around a stored answer when it is SCORED (trained on).

    Stored answers are cleaned: cut before the stop and stripped (``clean_response``).
    Scoring must see the tokens generation produced, or DPO trains on sequences the
    model never samples: after the plain template's ``Answer:`` the base model writes a
    space-led word (" Paris", token '▁Paris', not 'Paris') and it ends an answer by
    starting the next question, ``\nQuestion:`` (on Gemma 3 270M it never emitted EOS in
    24 samples). So a plain-template answer is scored as " " + answer + "\nQuestion:";
    scoring it with EOS instead would teach the model to stop with a token it never uses
    while its real terminator, the newline, is pushed down with the longer rejected
    answers: the answers then run on ("...filterantsQuestion:").
    A chat-template answer is the turn's text followed by the end-of-turn marker.
    """
    if uses_chat_template(tokenizer, template):
        vocab = tokenizer.get_vocab()
        end = next((t for t in _TURN_END if t in vocab), tokenizer.eos_token or "")
        return "", end
    return " ", PLAIN_STOPS[0]


def frame_response(text: str, frame: tuple[str, str], end: str | None = None,
                   tail: str = "") -> str:
    """The scored form of a stored answer: lead + answer + end (see ``response_frame``),
    then ``tail`` (``turn_tail``) after a chat turn that ended with its end-of-turn marker.

    ``end``: what generation actually ended the answer with (``answer_end``): '' if it
    was cut at the token limit, so no terminator the model never wrote is trained on;
    None (unknown: older or imported pairs, written answers) -> the frame's usual end.
    Scoring a cut answer with a terminator made every vote against a long, cut answer
    a vote against stopping after it; scoring an answer that ended with EOS with
    "\nQuestion:" taught a terminator the model did not use, and left EOS untouched.
    """
    lead, usual = frame
    closing = usual if end is None else end
    return f"{lead}{text}{closing}{tail if closing and closing == usual else ''}"


def turn_tail(tokenizer, template: str = "auto") -> str:
    """What the chat template writes after an assistant turn's end-of-turn marker when
    the conversation goes on (SmolLM2 and Gemma: "\n"); '' for the plain template.

    Generation stops at the marker and never writes it, but a finished turn is rendered
    with it, so training on it (``Sampler.scored``) scores an answer exactly as TRL's
    DPOTrainer renders it from a conversational export."""
    if not uses_chat_template(tokenizer, template):
        return ""
    marker = response_frame(tokenizer, template)[1]
    probe = "LiveDPOProbeText"  # text no template changes
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": probe}],
            tokenize=False)
    except Exception:  # noqa: BLE001 - templates raise anything (jinja errors)
        return ""
    rest = text[text.rfind(probe) + len(probe):] if probe in text else ""
    return rest[len(marker):] if marker and rest.startswith(marker) else ""


def answer_end(raw: str, stops: tuple[str, ...], stop_token: str | None,
               finished: bool) -> str | None:
    """What a generated answer ended with: the earliest stop string in its raw text, else
    the stop token's text (e.g. '<eos>', '<end_of_turn>'); '' if it was cut; None if it
    ended but neither is found (scored with the usual end)."""
    hits = [(raw.find(s), s) for s in stops if s in raw]
    if hits:
        return min(hits)[1]
    if not finished:
        return ""
    return stop_token


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus any end-of-turn marker the vocabulary has."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in _TURN_END if t in vocab)
    return sorted(ids)


def suppressed_token_ids(tokenizer) -> list[int]:
    """Special tokens that must never be sampled (pad, bos, unused, media markers...)."""
    keep = set(stop_token_ids(tokenizer))
    out = []
    for idx, tok in tokenizer.added_tokens_decoder.items():
        if idx in keep or idx >= len(tokenizer):
            continue
        if tok.special or _MEDIA_MARKER.match(tok.content):
            out.append(idx)
    return out


def clean_response(text: str, stops: tuple[str, ...]) -> str:
    """Cut at the first stop string and strip surrounding whitespace."""
    for s in stops:
        cut = text.find(s)
        if cut >= 0:
            text = text[:cut]
    return text.strip()


def cut_prompt(ids: list[int], max_tokens: int, bos_id: int | None) -> list[int]:
    """The last ``max_tokens`` tokens of a prompt; a leading BOS stays first."""
    if len(ids) <= max_tokens:
        return ids
    return ids[:1] + ids[len(ids) - max_tokens + 1:] if ids[0] == bos_id else ids[-max_tokens:]


def left_pad(ids: list[list[int]], max_tokens: int, pad_id: int,
             bos_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (N, T): rows cut to their last ``max_tokens``
    tokens (a leading BOS stays first) and padded on the left.

    Done here, not by the tokenizer: ``tokenizer(..., padding=True, truncation=True)``
    switches padding and truncation on in the shared Rust tokenizer, and the trainer
    thread's ``tokenizer(...)`` without them switches them off again: two threads doing
    that at once break each other's calls (e.g. a ValueError about unpadded batches).
    The pool thread and the trainer's answer-health check both sample.
    """
    cut = [cut_prompt(r, max_tokens, bos_id) for r in ids]
    width = max(len(r) for r in cut)
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in cut])  # (N, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in cut])  # (N, T)
    return input_ids, mask


def _length(row: torch.Tensor, eos_ids: list[int], pad_id: int) -> tuple[int, bool]:
    """(tokens a row generated, whether it stopped by itself).

    A row ends at its EOS, or at the padding that follows a stop string; a row with
    neither ran out of tokens (``max_new_tokens``).
    """
    for i, t in enumerate(row.tolist()):
        if t in eos_ids:
            return i + 1, True
        if t == pad_id:
            return i, True
    return len(row), False


class Sampler:
    """Batched sampling with the settings of one ``SamplingConfig``; needs the model lock."""

    def __init__(self, policy, cfg: SamplingConfig) -> None:
        self.policy = policy
        self.cfg = cfg
        tok = policy.tokenizer
        self.chat = uses_chat_template(tok, cfg.template)
        self.stops = () if self.chat else PLAIN_STOPS
        self.eos_ids = stop_token_ids(tok)
        self.suppress = suppressed_token_ids(tok)
        self.frame = response_frame(tok, cfg.template)
        self.tail = turn_tail(tok, cfg.template)
        self.tail_ids = (tuple(tok(self.tail, add_special_tokens=False)["input_ids"])
                         if self.tail else ())
        marker = tok.convert_tokens_to_ids(self.frame[1]) if self.chat else None
        self.turn_end_id = marker if isinstance(marker, int) else None
        self._local = threading.local()
        self.stopping = threading.Event()  # set by Service.stop: decode loops end at once

    @property
    def last_stats(self) -> dict:
        """Stats of THIS thread's last ``sample`` call (the pool thread and the trainer's
        answer-health check sample concurrently; neither sees the other's numbers)."""
        return getattr(self._local, "stats", {})

    def _hit_stop(self, row: int, tokens: torch.Tensor) -> bool:
        """True once a row's text contains a stop string (checked on its last tokens)."""
        tail = self.policy.tokenizer.decode(tokens[-8:], skip_special_tokens=True)
        return any(s in tail for s in self.stops)

    def format(self, prompt: str) -> str:
        return format_prompt(self.policy.tokenizer, prompt, self.cfg.template,
                             self.cfg.system_prompt)

    def scored(self, answer: str, end: str | None = None,
               ids: Sequence[int] | None = None) -> str | tuple[int, ...]:
        """A stored answer as training and scoring see it: its sampled token ``ids`` when
        kept, else the text framed as generation wrote it (``frame_response``). Either
        way an answer that ended its chat turn gets the template's ``turn_tail`` too."""
        if ids:
            ends_turn = self.turn_end_id is not None and ids[-1] == self.turn_end_id
            return tuple(ids) + (self.tail_ids if ends_turn else ())
        return frame_response(answer, self.frame, end, self.tail)

    def sample(self, prompts: list[str], version: str, seed: int,
               empty_retries: int | None = None) -> list[Sample]:
        """One response per entry of ``prompts`` (repeat a prompt for more), as ``version``.

        ``prompts`` are the user's texts; the template is applied here. All rows go
        through ONE batched decode loop; rows whose answer came out empty (the model
        stopped at once) are sampled again, together, up to ``empty_retries`` times
        (default ``cfg.empty_retries``; 0 to see the model as it is, as the answer-health
        check does). Holds the model lock at high priority per loop.
        """
        retries = self.cfg.empty_retries if empty_retries is None else empty_retries
        t0 = time.perf_counter()
        samples = self._sample_once(prompts, version, seed)
        tokens = sum(s.n_tokens for s in samples)
        for attempt in range(1, retries + 1):
            empty = [i for i, s in enumerate(samples) if not s.text]
            if not empty:
                break
            again = self._sample_once([prompts[i] for i in empty], version,
                                      seed + 7919 * attempt)
            tokens += sum(s.n_tokens for s in again)
            for i, s in zip(empty, again):
                samples[i] = s
        dt = time.perf_counter() - t0
        self._local.stats = {"rows": len(prompts), "seconds": dt, "tokens": tokens,
                           "tokens_per_s": tokens / dt if dt else 0.0,
                           "empty": sum(not s.text for s in samples)}
        return samples

    def _sample_once(self, prompts: list[str], version: str, seed: int) -> list[Sample]:
        """One batched decode loop over ``prompts``; cleaned answers."""
        tok, model = self.policy.tokenizer, self.policy.model
        ids = tok([self.format(p) for p in prompts],
                  add_special_tokens=not self.chat)["input_ids"]
        input_ids, mask = left_pad(ids, self.cfg.max_prompt_tokens, tok.pad_token_id,
                                   tok.bos_token_id)
        input_ids, mask = input_ids.to(self.policy.device), mask.to(self.policy.device)
        gen = torch.Generator(device=self.policy.device).manual_seed(seed)
        with self.policy.lock.hold(priority=True), self.policy.active(version):
            new = sample_batch(
                model, input_ids, mask,
                max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                top_k=self.cfg.top_k, top_p=self.cfg.top_p, eos_ids=self.eos_ids,
                pad_id=tok.pad_token_id, suppress_ids=self.suppress,
                stopped=self._hit_stop if self.stops else None, generator=gen,
                abort=self.stopping.is_set)  # (N, T_new)
        out = []
        for prompt_ids, row in zip(ids, new):
            n, ended = _length(row, self.eos_ids, tok.pad_token_id)
            raw = tok.decode(row[:n], skip_special_tokens=True)
            ended = ended or any(s in raw for s in self.stops)  # stop on the very last token
            last = int(row[n - 1]) if n else None
            token = tok.decode([last]) if last in self.eos_ids else None
            text = clean_response(raw, self.stops)
            seen = tuple(cut_prompt(prompt_ids, self.cfg.max_prompt_tokens, tok.bos_token_id))
            out.append(Sample(text, n, ended, answer_end(raw, self.stops, token, ended),
                              prompt_ids=seen,
                              token_ids=tuple(int(t) for t in row[:n]) if text else None))
        return out
