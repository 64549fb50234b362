"""One draft from K decisive votes: what do the round's settings teach, offline?

    python bench/focus.py --votes 16 --config '{}' --config '{"credit_weight": 100}'
    python bench/focus.py --oracle positive --votes 32 --config '{"end_anchor": 0.1}'

The live loop (``app.py simulate``) needs about 12 minutes a round on 2 cores, and a
lever's effect there is mixed with what the pool sampled and which rounds the gate
accepted. This asks the narrower question on fixed data: from the base answers of
bench/results/credit-base-answers.jsonl (4 per default prompt, with their sampled
token ids; ``python bench/credit.py --sample`` draws them), the oracle votes on two A/B
pairs per prompt of the voted prompts, the first ``--votes`` decisive votes (shuffled,
``--seed``) train ONE draft from base with the given TrainConfig settings, exactly as a
round trains (ending and credit marks, cached reference log-probs, ``train_draft``; no
held-out split, no gate), and the draft answers the held-out prompts (those ``simulate``
holds out), ``--samples-per-prompt`` times each. Per ``--config`` it reports the win
rate against the stored base answers of those prompts, what the oracle measures
(keyword share, positive words, characters) for the draft and for base, the share of
answers that end by themselves, their length, and the words the votes credit.

Prints a table; writes bench/results/focus.json (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from bench.common import RESULTS, machine, table, write_json
from bench.credit import decisive_ab_pairs, rows_by_prompt
from storage.files import atomic_write_json

ANSWERS = RESULTS / "credit-base-answers.jsonl"
POINTS = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


class _NoCache:
    """A store stand-in for ``attach_reference`` / ``train_draft``: nothing is cached or
    recorded (the draft is thrown away)."""

    def record_step(self, *args) -> None: ...
    def get_ref_logps(self, *args) -> dict: return {}
    def put_ref_logps(self, *args) -> None: ...


def load_answers(path: Path) -> dict[str, list[dict]]:
    """Base answers by prompt, in file order; each needs ``ids`` and ``prompt_ids``."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    if rows and "ids" not in rows[0]:
        raise SystemExit(f"{path} has no token ids: draw it again with "
                         "`python bench/credit.py --sample`")
    return rows_by_prompt(rows)


def examples_of(pairs, cfg, decode, vectors=None) -> tuple[list, list[str]]:
    """Training examples as a round builds them (sampled ids, ending and credit marks)."""
    from trainer.training import credit, endings
    from trainer.training.data import Example

    examples, rows = [], []
    for k, (p, c, r) in enumerate(pairs):
        examples.append(Example(key=str(k), pair_id=None, prompt=tuple(c["prompt_ids"]),
                                chosen=tuple(c["ids"]), rejected=tuple(r["ids"]), question=p))
        rows.append({"key": str(k), "chosen": c["text"], "rejected": r["text"],
                     "chosen_end": c["end"] if c["ended"] else "",
                     "rejected_end": r["end"] if r["ended"] else ""})
    if cfg.end_anchor or cfg.empty_guard:
        endings.mark_endings(rows, examples, decode)
    words: list[str] = []
    if cfg.credit_weight:
        found = credit.credited_words(credit.vote_sides(rows), cfg.credit_alpha, vectors,
                                      cfg.credit_similarity)
        words = [c.word if c.favoured else "-" + c.word for c in found]
        credit.mark_credit(examples, {c.word for c in found}, decode)
    return examples, words


def run_config(policy, sampler, oracle, settings: dict, pairs, eval_prompts, base_rows,
               per_prompt: int) -> dict:
    """Train one draft from base with ``settings`` and measure it on the held-out prompts."""
    import torch

    from trainer.config import TrainConfig
    from trainer.model.policy import BASE, TRAIN
    from trainer.progress import NullProgress
    from trainer.training.credit import model_vectors
    from trainer.training.data import attach_reference
    from trainer.training.health import measure
    from trainer.training.rounds import train_draft

    cfg = TrainConfig(**settings)
    tok = policy.tokenizer
    examples, credited = examples_of(pairs, cfg, lambda ids: tok.decode(
        ids, skip_special_tokens=True), model_vectors(tok, policy.model))
    t0 = time.perf_counter()
    attach_reference(examples, policy, _NoCache(), BASE, cfg.max_length, cfg.micro_batch * 2)
    torch.manual_seed(cfg.seed)  # every draft starts from the same LoRA initialisation
    policy.reset_train_adapter(BASE)
    fit = train_draft(policy, _NoCache(), examples, cfg, 1, BASE, NullProgress())
    train_s = time.perf_counter() - t0
    prompts = [p for p in eval_prompts for _ in range(per_prompt)]
    mine = sampler.sample(prompts, TRAIN, 99, empty_retries=0)
    health = measure(mine)
    wins = [POINTS[oracle(p, m.text, b["text"])] for p, m, b in zip(prompts, mine, base_rows)]
    fn = oracle.measure[1]
    return {"settings": settings, "credited": credited, "steps": fit["steps"],
            "train_s": round(train_s, 1), "win_rate": sum(wins) / len(wins),
            "measure": sum(fn(m.text) for m in mine) / len(mine),
            "ended": health.healthy, "empty": health.empty, "chars": health.mean_chars,
            "n": len(mine)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", default="keyword")
    ap.add_argument("--keyword", default="because")
    ap.add_argument("--keyword-tiebreak", default="tie", choices=("tie", "shorter"))
    ap.add_argument("--votes", type=int, default=16, help="Decisive votes to train on.")
    ap.add_argument("--config", action="append", default=None, metavar="JSON",
                    help="TrainConfig settings of one draft, e.g. '{\"credit_weight\": 100}' "
                         "(repeat for more drafts; default: the app's defaults).")
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--samples-per-prompt", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="Shuffles the decisive votes.")
    ap.add_argument("--answers", type=Path, default=ANSWERS)
    ap.add_argument("--model", default=None, help="Model (default: the embedded default); "
                    "it must be the one that wrote --answers.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    configs = [json.loads(c) for c in (args.config or ["{}"])]

    from trainer.config import ModelConfig, SamplingConfig
    from trainer.model.generate import Sampler
    from trainer.model.policy import Policy
    from trainer.sim.oracles import load_oracle
    from trainer.sim.simulate import split_prompts

    oracle = load_oracle(args.oracle, keyword=args.keyword, tiebreak=args.keyword_tiebreak)
    answers = load_answers(args.answers)
    eval_prompts, voted = split_prompts(list(answers), args.eval_prompts)
    pairs = decisive_ab_pairs(oracle, answers, voted)
    decisive = len(pairs)
    random.Random(args.seed).shuffle(pairs)
    pairs = pairs[:args.votes]
    base_rows = [r for p in eval_prompts for r in answers[p][:args.samples_per_prompt]]
    if len(base_rows) != len(eval_prompts) * args.samples_per_prompt:
        raise SystemExit(f"--samples-per-prompt {args.samples_per_prompt}: {args.answers} "
                         "has fewer base answers per prompt")
    fn = oracle.measure[1]
    base_measure = sum(fn(r["text"]) for r in base_rows) / len(base_rows)
    base_ended = sum(bool(r["ended"] and r["text"]) for r in base_rows) / len(base_rows)
    base_chars = sum(len(r["text"]) for r in base_rows) / len(base_rows)
    model_cfg = ModelConfig(**({"model": args.model} if args.model else {}))
    policy = Policy.load(model_cfg)
    sampler = Sampler(policy, SamplingConfig())
    print(f"{args.oracle}: {decisive} decisive votes of {sum(len(answers[p]) // 2 for p in voted)}"
          f" A/B pairs; training on {len(pairs)}", flush=True)
    results = []
    for settings in configs:
        results.append(run_config(policy, sampler, oracle, settings, pairs, eval_prompts,
                                  base_rows, args.samples_per_prompt))
        print(json.dumps(results[-1]), flush=True)
    print(table([{**r, "settings": json.dumps(r["settings"])} for r in results],
                ["settings", "steps", "credited", "win_rate", "measure", "ended", "chars",
                 "train_s"]))
    print(f"base: measure {base_measure:.3f}, ended {base_ended:.3f}, chars {base_chars:.0f}")
    out = {"machine": machine(), "oracle": args.oracle, "keyword": args.keyword,
           "votes": len(pairs), "decisive": decisive, "seed": args.seed,
           "eval_prompts": len(eval_prompts), "samples_per_prompt": args.samples_per_prompt,
           "base": {"measure": base_measure, "ended": base_ended, "chars": base_chars},
           "results": results}
    if args.json:
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}")
    else:
        print(f"wrote {write_json('focus.json', out)}")


if __name__ == "__main__":
    main()
