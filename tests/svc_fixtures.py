"""Build a real Service on the tiny model in a fresh data dir (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

from app.cli import build_parser, resolve
from app.commands import make_service
from trainer.model.policy import BASE


def tiny_service(data_dir: Path, model_dir: Path, *flags: str, start: bool = True):
    args = build_parser().parse_args(
        ["serve", "--data-dir", str(data_dir), "--model", str(model_dir), "--max-new-tokens",
         "10", "--ready-pairs", "4", "--batch-prompts", "4", "--lr", "1e-2", *flags])
    svc = make_service(resolve(args), terminal_progress=False)
    if start:
        svc.start(background=False, pool=False, trainer=False)
    return svc


def vote_all(svc, annotator: str = "alice", prefer: str = "shorter") -> int:
    """Vote on every available pair (shorter answer wins). Returns the number of votes."""
    n = 0
    while (pair := svc.next_pair(annotator)) is not None:
        a, b = pair["response_a"], pair["response_b"]
        svc.vote(annotator, pair["id"], "a" if len(a) <= len(b) else "b", decide_ms=10)
        n += 1
    return n


def voted_service(tmp_path: Path, model_dir: Path, *flags: str):
    """A service with 8 voted pairs. The tiny random model's held-out accuracy is noise,
    so the acceptance gate is opened (tolerance 1) except where a test checks the gate."""
    svc = tiny_service(tmp_path / "data", model_dir, "--accept-tolerance", "1", *flags)
    svc.pool.fill_once(8)
    vote_all(svc)
    return svc


def record_sampled_vote(svc, i: int, a: str, b: str, *, end_a: str = "",
                        vote: str = "a") -> None:
    """Store, for the prompt "question number {i}", a pair of base answers that kept the
    token ids they tokenise to (A with its ending ``end_a``, '' = cut at the token limit;
    B cut), and alice's ``vote`` on it."""
    tok = svc.policy.tokenizer
    prompt = f"question number {i}"
    pid = svc.store.add_prompt(prompt)
    ids_a = tok(" " + a + end_a, add_special_tokens=False)["input_ids"]
    ids_b = tok(" " + b, add_special_tokens=False)["input_ids"]
    p_ids = tok(svc.sampler.format(prompt))["input_ids"]
    pair = svc.store.record_pair(pid, a, b, BASE, BASE, {}, seed=i, end_a=end_a, end_b="",
                                 prompt_ids=p_ids, ids_a=ids_a, ids_b=ids_b)
    svc.store.record_vote(pair, "alice", vote)
