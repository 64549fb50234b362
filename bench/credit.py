"""Which words does ``--credit-weight``'s test credit, after how many votes, per oracle?

    python bench/credit.py                 # reads bench/results/credit-base-answers.jsonl
    python bench/credit.py --sample        # samples it first: 4 base answers per default prompt

The answers are Gemma 3 270M base's, 4 per default prompt at the app's sampling settings
(about 13 minutes on 2 cores to sample). In pair mode each prompt's answers make two A/B
pairs; in rank mode they make one rank-of-4 set, marked as ``simulate`` marks it
(``oracles.rank_vote``). Each oracle votes, and its decisive votes, shuffled (5 seeds),
are fed to ``credit.credited_words`` K at a time, each as its two sides
(``credit.vote_sides``): each word alone (``--credit-similarity 0``), and each word
also with its embedding neighbours (the default similarity). A preference about a word
or a kind of word should be credited within a few of its votes, a preference about
length never.

Besides the shipped oracles, the three probes of bench/probes.py (more hedges, more
second person, more numbers: style preferences nothing was tuned on). ``on target`` counts
the credited words the oracle rewards, ``other`` the rest.
Prints a table; writes bench/results/credit.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from bench.common import RESULTS, table, write_json
from bench.probes import PROBES
from storage.files import atomic_write, jsonl_text
from storage.ranking import implied_pairs, tiers_of
from trainer.config import TrainConfig
from trainer.sim.oracles import POSITIVE_WORDS, load_oracle, rank_vote
from trainer.training.credit import credited_words, vote_sides

ANSWERS = RESULTS / "credit-base-answers.jsonl"
ORACLES = ("keyword", "positive", "shorter", *PROBES)
REWARDED = {"keyword": {"because"}.__contains__, "positive": POSITIVE_WORDS.__contains__,
            "shorter": lambda w: False, **{k: o.rewarded for k, o in PROBES.items()}}
MODES = ("pair", "rank")
VOTES = (6, 12, 24, 48, 96)
SEEDS = 5


def sample(per_prompt: int = 4, seed: int = 1234) -> None:
    """Write ANSWERS: ``per_prompt`` base answers to each default prompt, with their
    sampled token ids (bench/focus.py trains on them)."""
    from storage.seed import DEFAULT_PROMPTS
    from trainer.config import ModelConfig, SamplingConfig
    from trainer.model.generate import Sampler
    from trainer.model.policy import BASE, Policy

    prompts = [t.strip() for t in DEFAULT_PROMPTS.read_text().split("\n") if t.strip()]
    sampler = Sampler(Policy.load(ModelConfig()), SamplingConfig())
    rows = []
    for i in range(0, len(prompts), 16):
        batch = [p for p in prompts[i:i + 16] for _ in range(per_prompt)]
        for p, s in zip(batch, sampler.sample(batch, BASE, seed + i)):
            rows.append({"prompt": p, "text": s.text, "ended": s.finished, "end": s.end,
                         "ids": list(s.token_ids or []), "prompt_ids": list(s.prompt_ids)})
        print(f"sampled {len(rows)} answers", file=sys.stderr, flush=True)
    atomic_write(ANSWERS, jsonl_text(rows))


def rows_by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    """Answer rows by prompt, in file order."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["prompt"], []).append(r)
    return out


def by_prompt(rows: list[dict]) -> dict[str, list[str]]:
    """Answer texts by prompt, in file order."""
    return {p: [r["text"] for r in rs] for p, rs in rows_by_prompt(rows).items()}


def decisive_ab_pairs(oracle, answers: dict[str, list[dict]], prompts: list[str] | None = None
                      ) -> list[tuple[str, dict, dict]]:
    """(prompt, chosen row, rejected row) of every decisive A/B vote, the answers of a
    prompt paired in order (1st with 2nd, 3rd with 4th, ...); ``prompts``: only those."""
    out = []
    for p in (answers if prompts is None else prompts):
        rows = answers[p]
        for a, b in zip(rows[::2], rows[1::2]):
            verdict = oracle(p, a["text"], b["text"])
            if verdict in ("a", "b"):
                out.append((p, a, b) if verdict == "a" else (p, b, a))
    return out


def decisive_votes(oracle, rows: list[dict]) -> list[tuple[str, str]]:
    """(chosen, rejected) texts of every decisive A/B vote (``decisive_ab_pairs``)."""
    return [(c["text"], r["text"]) for _, c, r in decisive_ab_pairs(oracle, rows_by_prompt(rows))]


def decisive_rank_votes(oracle, rows: list[dict]) -> list[tuple[str, str]]:
    """The two sides (``vote_sides``) of every decisive rank vote on a prompt's answers."""
    out = []
    for prompt, texts in by_prompt(rows).items():
        choice, best, worst = rank_vote(oracle, prompt, texts)
        if choice != "rank":
            continue
        implied = [{"key": f"{prompt}:{k}", "group": prompt, "chosen": texts[r["chosen"]],
                    "rejected": texts[r["rejected"]]}
                   for k, r in enumerate(implied_pairs([tiers_of(best, worst, len(texts))],
                                                       len(texts)))]
        out += vote_sides(implied)
    return out


def vectors_of_default_model():
    """Word vectors from the default model's input embeddings, as rounds compute them."""
    from trainer.config import ModelConfig
    from trainer.model.policy import Policy
    from trainer.training.credit import model_vectors

    policy = Policy.load(ModelConfig())
    return model_vectors(policy.tokenizer, policy.model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", action="store_true", help="Sample the base answers first.")
    ap.add_argument("--similarity", type=float, default=TrainConfig().credit_similarity,
                    help="--credit-similarity of the groups column (default: the app's).")
    ap.add_argument("--no-split", dest="split", action="store_false", help="Bonferroni "
                    "over words and groups together, not over the words at alpha / 2 and the "
                    "groups at alpha / 2 (credit.family_levels, the app's test).")
    ap.add_argument("--out", default="credit.json", help="JSON file name under bench/results.")
    args = ap.parse_args()
    if args.sample or not ANSWERS.exists():
        sample()
    rows = [json.loads(line) for line in ANSWERS.read_text(encoding="utf-8").split("\n") if line]
    vectors, similarity = vectors_of_default_model(), args.similarity
    results = []
    for mode, name in ((m, o) for m in MODES for o in ORACLES):
        oracle = PROBES.get(name) or load_oracle(name, keyword="because", tiebreak="tie")
        votes = (decisive_votes if mode == "pair" else decisive_rank_votes)(oracle, rows)
        for k in VOTES:
            if k > len(votes):
                continue
            row = {"mode": mode, "oracle": name, "decisive": len(votes), "votes": k}
            for col, sim in (("words", 0.0), ("groups", similarity)):
                found = []
                for seed in range(SEEDS):
                    shuffled = votes[:]
                    random.Random(seed).shuffle(shuffled)
                    found.append(credited_words(shuffled[:k], vectors=vectors, similarity=sim,
                                                split=args.split))
                got = {c.word for f in found for c in f}
                on = sorted(w for w in got if REWARDED[name](w))
                row |= {f"{col}_seeds": sum(bool(f) for f in found),
                        f"{col}_on_target": len(on), f"{col}_other": len(got) - len(on),
                        f"{col}_credited": sorted(
                            {c.word if c.favoured else "-" + c.word for f in found for c in f})}
            row["examples"] = " ".join(on[:4] + sorted(
                w for w in row["groups_credited"] if not REWARDED[name](w.lstrip("-")))[:4])
            results.append(row)
    print(table(results, ["mode", "oracle", "decisive", "votes", "words_seeds",
                          "words_on_target", "words_other", "groups_seeds", "groups_on_target",
                          "groups_other", "examples"]))
    write_json(args.out, {"answers": len(rows), "seeds": SEEDS, "similarity": similarity,
                          "split": args.split,
                          "results": results})


if __name__ == "__main__":
    main()
