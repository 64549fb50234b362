"""Response-only per-sequence log-probs for causal LMs, without full-vocabulary logits.

The default model's vocabulary has 262,144 tokens, so a (B, T, V) fp32 logits tensor for
a batch of 8 x 256 tokens is 2 GB: full logits dominate DPO's time and memory. Here the
transformer body runs once, hidden states are kept only at the positions that PREDICT
response tokens, and the LM head + log-softmax + gather run over those rows in chunks,
so at most (chunk, V) logits exist at a time. Works for a plain HF CausalLM and for a
PEFT model wrapping one; gradients flow (policy pass) or not (reference pass).
"""

from __future__ import annotations

import torch


def build_batch(tokenizer, prompts: list[str], responses: list[str], max_length: int,
                pad_id: int) -> dict[str, torch.Tensor]:
    """Tokenise (prompt, response) rows, RIGHT-padded to the longest row of this batch.

    The prompt gets the tokenizer's default special tokens (e.g. BOS), the response none
    but a final EOS. Too long: the prompt is cut from the left first, then the response
    from the right, keeping at least one response token.
    Returns input_ids, attention_mask and response_mask, each (B, T).
    """
    rows, masks = [], []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for prompt, response in zip(prompts, responses):
        p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + eos
        over = len(p) + len(r) - max_length
        if over > 0:
            cut = min(over, max(len(p) - 1, 0))
            p = p[cut:]
            over -= cut
        if over > 0:
            r = r[:max(len(r) - over, 1)]
        rows.append(p + r)
        masks.append([0] * len(p) + [1] * len(r))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, :len(r)] = torch.tensor(r)
        attn[i, :len(r)] = 1
        resp[i, :len(m)] = torch.tensor(m, dtype=torch.bool)
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


def _body_and_head(model):
    """(transformer body, LM head, final-logit softcap) of a CausalLM or PEFT model."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    softcap = getattr(causal.config, "final_logit_softcapping", None)
    return causal.model, causal.get_output_embeddings(), softcap


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor, chunk_size: int = 1024
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p(response tokens | prefix) per row, and the response token counts.

    input_ids, attention_mask, response_mask: (B, T). Returns (B,) float, (B,) long.
    Only rows of hidden states that predict a response token reach the LM head, in
    chunks of ``chunk_size`` rows: the full (B, T, V) logits are never materialised.
    """
    body, head, softcap = _body_and_head(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # position t predicts token t+1: targets are response tokens at t+1
    targets_mask = response_mask[:, 1:]  # (B, T-1)
    rows, cols = targets_mask.nonzero(as_tuple=True)  # (R,), (R,)
    h = hidden[:, :-1][rows, cols]  # (R, H)
    targets = input_ids[:, 1:][rows, cols]  # (R,)
    token_logps = []
    for start in range(0, h.shape[0], chunk_size):
        logits = head(h[start:start + chunk_size]).float()  # (c, V)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logz = torch.logsumexp(logits, dim=-1)  # (c,)
        picked = logits.gather(-1, targets[start:start + chunk_size, None]).squeeze(-1)
        token_logps.append(picked - logz)
    flat = torch.cat(token_logps) if token_logps else hidden.new_zeros(0)
    sums = torch.zeros(input_ids.shape[0], dtype=flat.dtype, device=flat.device)
    sums = sums.index_add(0, rows, flat)  # (B,)
    counts = targets_mask.sum(-1)  # (B,)
    return sums, counts


def naive_sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook way (full (B, T, V) logits, then gather): the benchmark's baseline
    and the tests' oracle."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
    picked = logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    mask = response_mask[:, 1:]
    return (picked * mask).sum(-1), mask.sum(-1)


def mean_logps(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-token mean log-prob (length normalisation, e.g. for IPO)."""
    return sums / counts.clamp(min=1)
