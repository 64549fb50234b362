"""Response-only per-sequence log-probs for causal LMs, without full-vocabulary logits.

The default model's vocabulary has 262,144 tokens: fp32 logits for 8 rows x 256 tokens
are 2 GB, and autograd would keep them (and a log-softmax copy) alive until backward. So
the transformer body runs once, hidden states are kept only at the positions that
PREDICT a response token, and the LM head, log-softmax and gather run over those rows
in chunks: at most (chunk_size, V) logits exist at any time, in the forward and in the
backward (see ``_FrozenHeadLogps``). Works for a plain HF CausalLM and for a PEFT model
wrapping one; gradients flow for the policy pass, and under ``torch.no_grad`` (the
reference pass) nothing is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Tensor = torch.Tensor


def _leading_specials(ids: list[int], special: set[int]) -> int:
    """How many ids at the start of a prompt are special tokens (e.g. BOS)."""
    n = 0
    while n < len(ids) and ids[n] in special:
        n += 1
    return n


def _fit(p: list[int], r: list[int], max_length: int, keep_prefix: int
         ) -> tuple[list[int], list[int]]:
    """Cut (prompt, response) ids to max_length tokens in all.

    The prompt loses tokens from the left first, just after its leading special tokens
    (BOS stays: Gemma degrades badly without it) and keeping at least one token so the
    first response token has a position that predicts it; then the response loses
    tokens from the right, keeping at least one.
    """
    over = len(p) + len(r) - max_length
    if over <= 0:
        return p, r
    keep = min(len(p), max(keep_prefix, 1), max_length - 1)  # prompt tokens never cut
    cut = min(over, len(p) - keep)
    if cut > 0:
        head = min(keep_prefix, keep)
        p = p[:head] + p[head + cut:]
        over -= cut
    if over > 0:  # the prompt is down to `keep` <= max_length - 1 tokens
        r = r[:max(len(r) - over, 1)]
    return p, r


Seq = str | tuple[int, ...]  # text to tokenise, or the exact token ids (as sampled)


def token_ids(tokenizer, items: list[Seq], add_special_tokens: bool) -> list[list[int]]:
    """Ids of each item: a tuple of ids is taken as it is (the tokens generation sampled),
    a string is tokenised (all strings of the list in one call)."""
    texts = [i for i, x in enumerate(items) if isinstance(x, str)]
    out = [list(x) if not isinstance(x, str) else [] for x in items]
    if texts:
        enc = tokenizer([items[i] for i in texts], add_special_tokens=add_special_tokens)
        for i, ids in zip(texts, enc["input_ids"]):
            out[i] = ids
    return out


def build_batch(tokenizer, prompts: list[Seq], responses: list[Seq], max_length: int,
                pad_id: int) -> dict[str, Tensor]:
    """Tokenise (prompt, response) rows, RIGHT-padded to the longest row of THIS batch.

    A prompt or response given as a tuple of token ids is used exactly (an answer as it
    was sampled: re-tokenising its text can give other tokens than the model produced);
    strings are tokenised as follows.

    Prompts are already formatted strings (any chat template was applied upstream) and
    responses already framed: whatever ends an answer (the plain template's stop string,
    an end-of-turn marker or EOS) is part of the response text, scored like its other
    tokens (``generate.frame_response``). The prompt is tokenised with the tokenizer's
    default special tokens (e.g. BOS), the response separately without them (special
    tokens written in its text, such as ``<end_of_turn>``, still map to their ids), and
    the two are concatenated: separate tokenisation matches generation, where the
    response tokens were sampled after the prompt's. Rows longer than
    ``max_length`` are cut by ``_fit``: prompt from the left first (after BOS), then the
    response from the right, keeping at least one response token.

    Returns input_ids (B, T) long, attention_mask (B, T) long, response_mask (B, T) bool
    (the response tokens, i.e. the loss positions), with T the longest row's length.
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"build_batch needs as many prompts as responses, at least one; "
                         f"got {len(prompts)} prompts and {len(responses)} responses")
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: must be >= 2 (one prompt token to "
                         "condition on, one response token to score)")
    if pad_id is None:
        raise ValueError("pad_id is None: pass the tokenizer's pad id (or its eos id)")
    special = set(tokenizer.all_special_ids)
    p_ids = token_ids(tokenizer, list(prompts), add_special_tokens=True)
    r_ids = token_ids(tokenizer, list(responses), add_special_tokens=False)
    rows = [_fit(p, r, max_length, _leading_specials(p, special))
            for p, r in zip(p_ids, r_ids)]
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attn = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    resp = torch.zeros((len(rows), width), dtype=torch.bool)  # (B, T)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attn[i, :n] = 1
        resp[i, len(p):n] = True
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


def body_head_softcap(model) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """(transformer body, LM head, final-logit softcap) of a CausalLM or a PeftModel.

    PeftModel.get_base_model() is the CausalLM with the adapter layers injected in place,
    so its body and head still run the adapter (and honour ``disable_adapter()``).
    ``PreTrainedModel.get_decoder()`` (transformers 5) returns the body (e.g.
    Gemma3TextModel, whose output is already final-normed). Gemma 2 sets
    ``final_logit_softcapping`` (30.0); Gemma 3's config has the field, None by default
    (also None in the converted 270M); it is applied whenever set.
    """
    get_base = getattr(model, "get_base_model", None)
    causal = get_base() if callable(get_base) else model
    head = causal.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(causal).__name__} has no output embeddings (LM head)")
    softcap = getattr(causal.config, "final_logit_softcapping", None)
    return causal.get_decoder(), head, softcap


def _wide(x: Tensor) -> Tensor:
    """x in fp32 at least (bf16 / fp16 logits are upcast; fp64 stays fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _head_logps(head, h: Tensor, targets: Tensor, softcap: float | None) -> Tensor:
    """log softmax(head(h))[target] for a chunk of rows, via autograd. h: (c, H) -> (c,)."""
    logits = _wide(head(h))  # (c, V)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)  # (c,)
    return picked - torch.logsumexp(logits, dim=-1)


def _linear_logps(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                  softcap: float | None, want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Token log-probs of a chunk through a linear head, and d logp / d h if asked.

    h: (c, H), weight: (V, H), targets: (c,). With z = h W^T (+ b) and logits
    s(z) = cap * tanh(z / cap) (or z), d log p_t / d z = (onehot(t) - softmax) * s'(z),
    so d log p_t / d h = that (c, V) row times W: a (c, H) result. Works in place
    on one (c, V) fp32 buffer (two with a softcap).
    """
    z = _wide(F.linear(h, weight, bias))  # (c, V)
    th = None
    if softcap:
        th = torch.tanh(z / softcap)  # (c, V)
        z = th * softcap
    picked = z.gather(-1, targets[:, None])  # (c, 1)
    top = z.amax(dim=-1, keepdim=True)  # (c, 1)
    e = z.sub_(top).exp_()  # exp(z - max) (c, V), in place: no second (c, V) buffer
    total = e.sum(dim=-1, keepdim=True)  # (c, 1)
    logp = (picked - top - total.log()).squeeze(-1)  # (c,)
    if not want_grad:
        return logp, None
    g = e.div_(total).neg_()  # -softmax (c, V)
    g.scatter_add_(-1, targets[:, None], torch.ones_like(picked))  # onehot - softmax
    if th is not None:
        g.mul_(th.square_().neg_().add_(1))  # s'(z) = 1 - tanh^2
    return logp, g.to(weight.dtype) @ weight  # (c,), (c, H)


class _FrozenHeadLogps(torch.autograd.Function):
    """Chunked token log-probs through a FROZEN linear LM head (LoRA / QLoRA training).

    Autograd through ``_head_logps`` keeps every chunk's (c, V) fp32 logits until
    backward, i.e. (R, V) for R response tokens: the full-logits cost again. Since the
    head is frozen, only d logp / d h is needed; it is (R, H), so the forward computes
    it chunk by chunk while the logits are at hand and backward merely scales it by the
    incoming gradient. Same matmuls as autograd (one head matmul each way), no
    recompute, fewer (c, V) passes, and peak memory of one chunk. The d logp / d h
    matmul runs even if backward never comes: score no-gradient rows under no_grad.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, softcap, chunk_size):  # h: (R, H)
        logps, grads = [], []
        for s in range(0, h.shape[0], chunk_size):
            lp, dh = _linear_logps(h[s:s + chunk_size], weight, bias,
                                   targets[s:s + chunk_size], softcap, want_grad=True)
            logps.append(lp)
            grads.append(dh)
        ctx.save_for_backward(torch.cat(grads))  # (R, H)
        ctx.h_dtype = h.dtype
        return torch.cat(logps)  # (R,)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out: (R,)
        (dlogp_dh,) = ctx.saved_tensors
        grad_h = (grad_out[:, None] * _wide(dlogp_dh)).to(ctx.h_dtype)  # (R, H)
        return grad_h, None, None, None, None, None


def _is_plain_linear(head) -> bool:
    """A plain nn.Linear head, not behind an accelerate hook (offloaded weights) nor
    quantised (bitsandbytes layers subclass nn.Linear): F.linear on its weight is its
    forward."""
    return type(head) is torch.nn.Linear and not hasattr(head, "_hf_hook")


def _token_logps(head, h: Tensor, targets: Tensor, softcap: float | None,
                 chunk_size: int) -> Tensor:
    """log p(targets | h) of R rows through the LM head, chunked. h: (R, H) -> (R,) fp32.

    No graph needed (reference pass): plain chunks, each freed at once. Frozen linear
    head (LoRA): ``_FrozenHeadLogps``. Trainable or exotic head (full fine-tuning, LoRA
    on lm_head): each chunk is checkpointed, so its logits are rebuilt in backward
    rather than kept.
    """
    if h.shape[0] == 0:
        return h.sum(-1).float()  # (0,), still attached to the graph
    trainable = any(p.requires_grad for p in head.parameters())
    graph = torch.is_grad_enabled() and (h.requires_grad or trainable)
    plain = _is_plain_linear(head)
    if graph and plain and not trainable:
        return _FrozenHeadLogps.apply(h, head.weight, head.bias, targets, softcap, chunk_size)
    out = []
    for s in range(0, h.shape[0], chunk_size):
        hc, tc = h[s:s + chunk_size], targets[s:s + chunk_size]  # (c, H), (c,)
        if graph:
            out.append(checkpoint(_head_logps, head, hc, tc, softcap, use_reentrant=False))
        elif plain:
            out.append(_linear_logps(hc, head.weight, head.bias, tc, softcap, False)[0])
        else:
            out.append(_head_logps(head, hc, tc, softcap))
    return torch.cat(out)  # (R,)


def sequence_logps(model, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
                   chunk_size: int = 1024, masks: Sequence[Tensor] = ()
                   ) -> tuple[Tensor, ...]:
    """Summed log p(response tokens | prefix) per row, and the number of tokens scored.

    input_ids, attention_mask, response_mask: (B, T), right-padded (``build_batch``).
    Position t predicts token t + 1, so a response token at t + 1 is scored from the
    hidden state at t (a response token at position 0 has no predictor and is skipped).
    Only those R hidden rows reach the LM head, ``chunk_size`` rows at a time: the full
    (B, T, V) logits never exist. Peak extra memory is about one (chunk_size, V) fp32
    buffer: 1 GB at V = 262,144 and the default 1024 rows, which holds a typical
    micro-batch's response tokens in one chunk (on 2 CPU cores, 600 rows: chunks of 256
    took ~15% longer with under half the peak; lower it when memory is tight).
    Returns (B,) fp32 sums (differentiable unless under no_grad) and (B,) long counts,
    then for each of ``masks`` ((B, T) bool or float weights over response positions,
    e.g. an answer's ending, ``ending_mask``, or its credited words) the (B,) sums of
    the token log-probs times the mask, from the same pass.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: must be >= 1")
    body, head, softcap = body_head_softcap(model)
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out[0]  # (B, T, H) last_hidden_state, after the final norm
    predicts = response_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1)
    rows, cols = predicts.nonzero(as_tuple=True)  # (R,), (R,)
    h = hidden[rows, cols]  # (R, H)
    targets = input_ids[rows, cols + 1]  # (R,)
    token_logps = _token_logps(head, h, targets, softcap, chunk_size)  # (R,)
    sums = token_logps.new_zeros(input_ids.shape[0]).index_add(0, rows, token_logps)  # (B,)
    masked = [token_logps.new_zeros(input_ids.shape[0]).index_add(
        0, rows, token_logps * m[rows, cols + 1].to(token_logps.dtype)) for m in masks]  # (B,)
    return sums, predicts.sum(-1), *masked


def ending_mask(response_mask: Tensor, lengths: list[int], endings: list[int]) -> Tensor:
    """(B, T) bool: the last ``endings[i]`` response tokens of row i (its stop string or
    end-of-sequence token), only where the row kept its whole response of ``lengths[i]``
    tokens (a response cut by ``max_length`` has lost its ending)."""
    mask = torch.zeros_like(response_mask, dtype=torch.bool)  # (B, T)
    for i, (n, k) in enumerate(zip(lengths, endings)):
        pos = response_mask[i].nonzero(as_tuple=True)[0]  # (n_i,)
        if k > 0 and len(pos) == n and k < n:
            mask[i, pos[-k:]] = True
    return mask


def response_hidden(model, input_ids: Tensor, attention_mask: Tensor,
                    response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Final hidden states that predict the response tokens, and the row of each.

    Same positions as ``sequence_logps`` scores. (B, T) inputs -> (R, H), (R,).
    """
    body, _, _ = body_head_softcap(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask,
                  use_cache=False)[0]  # (B, T, H)
    predicts = response_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1)
    rows, cols = predicts.nonzero(as_tuple=True)  # (R,), (R,)
    return hidden[rows, cols], rows


def _head_log_softmax(head, h: Tensor, softcap: float | None) -> Tensor:
    """log softmax over the vocabulary of a chunk of hidden rows. (c, H) -> (c, V) fp32."""
    logits = _wide(head(h))  # (c, V)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)


def token_kl(head, h_p: Tensor, h_q: Tensor, softcap: float | None,
             chunk_size: int = 256) -> Tensor:
    """Exact KL(p || q) of the next-token distributions at each position, summed over V.

    h_p, h_q: (R, H) hidden rows of the same positions under two policies (e.g. the
    adapter and base) sharing one LM head. KL_t = sum_v p(v) (log p(v) - log q(v)) >= 0.
    Averaged over the positions of sampled responses this is the per-token KL of the
    DPO objective's constraint (paper Eq. 3), without the variance and the sampling
    bias (temperature, top-k/top-p) of a Monte-Carlo log-ratio. Returns (R,) fp32.
    """
    out = []
    for s in range(0, h_p.shape[0], chunk_size):
        lp = _head_log_softmax(head, h_p[s:s + chunk_size], softcap)  # (c, V)
        lq = _head_log_softmax(head, h_q[s:s + chunk_size], softcap)  # (c, V)
        out.append((lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0))  # (c,)
    return torch.cat(out) if out else h_p.new_zeros(0, dtype=torch.float32)


def naive_sequence_logps(model, input_ids: Tensor, attention_mask: Tensor,
                         response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The textbook way: full (B, T, V) logits from ``model(...)``, log-softmax, gather.

    The benchmark's naive baseline and the tests' oracle; same outputs as
    ``sequence_logps``.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   use_cache=False).logits.float()  # (B, T, V)
    logps = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
    picked = logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    mask = response_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1)
    return (picked * mask).sum(-1), mask.sum(-1)


def mean_logps(sums: Tensor, counts: Tensor) -> Tensor:
    """Per-token mean log-prob (length normalisation, e.g. for IPO). (B,), (B,) -> (B,)."""
    return sums / counts.clamp(min=1)
