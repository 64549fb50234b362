"""The learning curve: the REAL loop driven by a scripted annotator.

``python app.py simulate --oracle shorter`` starts the same service as ``serve`` (pair
pool thread, SQLite, trainer thread, hot-swaps) and replaces the human with an oracle
that votes on each pair it is served. After every round it measures, on held-out prompts
the oracle never voted on:
  - the oracle's win rate of the serving adapter against base (several samples per
    prompt, ties and both-bad count half);
  - the mean per-token KL(policy || base) along the serving adapter's samples: at each
    sampled position the exact KL between the two next-token distributions (summed over
    the vocabulary; never negative, unlike a Monte-Carlo log-ratio of tempered samples),
the live analogue of the DPO paper's reward / KL frontier (Fig. 2).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from storage.files import atomic_write, atomic_write_json, jsonl_text
from storage.readers import read_jsonl
from storage.runs import INTERRUPTED
from trainer.model.policy import BASE
from trainer.model.scoring import mean_token_kl
from trainer.sim.oracles import rank_vote
from trainer.training.health import measure
from trainer.training.trainloop import TRAINED_THROUGH

log = logging.getLogger(__name__)
ANNOTATOR = "oracle"
N_EXAMPLES = 4


@dataclass
class EvalResult:
    win_rate: float
    kl_per_token: float
    n: int
    mean_chars: float  # of the serving adapter's answers: what the policy now writes
    ended: float  # share of them that ended by themselves (trainer/training/health.py)
    answers: list[dict]  # every (prompt, serving answer, base answer, verdict) row
    measure: dict | None  # the oracle's own measure (oracles.py), serving vs base

    @property
    def examples(self) -> list[dict]:
        """One row for each of the first few prompts, for the JSON summary."""
        seen: dict[str, dict] = {}
        for row in self.answers:
            seen.setdefault(row["prompt"], row)
        return list(seen.values())[:N_EXAMPLES]


def split_prompts(prompts: list[str], n_eval: int) -> tuple[list[str], list[str]]:
    """(held-out, voted): ``n_eval`` prompts spread evenly over ``prompts``, and the rest.

    Evenly spaced, not the last ``n_eval``: the default prompt file is grouped by kind
    (advice, explanations, stories, code, summaries, short facts), and its tail is all
    short facts, where few answers can say "because" however well the policy learnt to.
    The held-out prompts must come from the same mix the oracle votes on.
    """
    if not 0 < n_eval < len(prompts):
        raise ValueError(f"--eval-prompts {n_eval}: there are {len(prompts)} prompts; hold out "
                         f"between 1 and {len(prompts) - 1} so some are left to vote on")
    picked = {int((i + 0.5) * len(prompts) / n_eval) for i in range(n_eval)}
    return ([p for i, p in enumerate(prompts) if i in picked],
            [p for i, p in enumerate(prompts) if i not in picked])


def evaluate(svc, oracle, prompts: list[str], samples: int, seed: int,
             base_answers: list | None = None) -> EvalResult:
    """Oracle win rate of serving vs base on ``prompts``, and per-token KL to base.

    ``base_answers``: base's samples of the same rows (seed + 1), reused across rounds:
    base never changes, and one fixed set makes the rounds' win rates comparable.
    """
    serving = svc.policy.serving
    rows = [p for p in prompts for _ in range(samples)]
    mine = svc.sampler.sample(rows, serving, seed)
    theirs = base_answers or svc.sampler.sample(rows, BASE, seed + 1)
    if serving == BASE:  # base vs base: two independent sets, for an honest 50%
        kl = 0.0
    else:
        fmt = [s.prompt_ids or svc.sampler.format(p) for p, s in zip(rows, mine)]
        scored = [svc.sampler.scored(s.text, s.scored_end, s.token_ids) for s in mine]
        kl, _ = mean_token_kl(svc.policy, fmt, scored, serving, BASE, svc.train_cfg.max_length)
    points = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}
    answers = [{"prompt": p, "serving": m.text, "base": t.text, "verdict": oracle(p, m.text, t.text)}
               for p, m, t in zip(rows, mine, theirs)]
    wins = [points[a["verdict"]] for a in answers]
    health = measure(mine)
    return EvalResult(sum(wins) / len(wins), kl, len(wins), health.mean_chars, health.healthy,
                      answers, oracle_measure(oracle, answers))


def oracle_measure(oracle, answers: list[dict]) -> dict | None:
    """Mean of the oracle's ``measure`` over the serving and the base answers, if it has one."""
    named = getattr(oracle, "measure", None)
    if not named:
        return None
    name, fn = named
    return {"name": name,
            "serving": round(sum(fn(a["serving"]) for a in answers) / len(answers), 4),
            "base": round(sum(fn(a["base"]) for a in answers) / len(answers), 4)}


def cast_vote(svc, oracle, item: dict) -> int:
    """The oracle votes on one pair or rank set as the page would let a person; returns
    how many answers it read."""
    answers = item.get("answers")
    if answers is None:
        choice = oracle(item["prompt"], item["response_a"], item["response_b"])
        svc.vote(ANNOTATOR, item["id"], choice, decide_ms=0)
        return 2
    choice, best, worst = rank_vote(oracle, item["prompt"], [a["text"] for a in answers])
    svc.vote_rank(ANNOTATOR, item["id"], choice, best, worst, decide_ms=0)
    return len(answers)


CHECK_KEYS = ("steps", "train_seconds", "health_before", "health_after", "health_base",
              "health_batches", "health_seconds")


def round_check(rnd: dict) -> dict:
    """What a round trained (pairs, steps, the words its votes credit) and what its
    answer-health check saw (draft, serving, base: shares that ended, were cut, came out
    empty), from the round's stored metrics."""
    metrics, counts = rnd.get("metrics") or {}, rnd.get("counts") or {}
    return {k: metrics[k] for k in CHECK_KEYS if k in metrics} | {
        "train_pairs": counts.get("train"),
        "credited": [c["word"] if c["favoured"] else "-" + c["word"]
                     for c in counts.get("credited") or []]}


def finished_rounds(svc, after_id: int) -> list[dict]:
    """The rounds after ``after_id`` that finished, oldest first; a round a stop
    interrupted (marked failed at the next start) is not one of them."""
    rows = [r for r in svc.store.list_rounds(limit=10) if r["id"] > after_id
            and r["status"] != "running" and not (r.get("error") or "").startswith(INTERRUPTED)]
    return sorted(rows, key=lambda r: r["id"])


def votes_left(svc, after_id: int, votes_per_round: int) -> int:
    """Votes still to cast for the round after ``after_id``: none if it has finished
    already (the run stopped while evaluating it), else what the trainer still waits
    for (the votes cast before the stop count). The count is read before the check: a
    round's status is written before the trainer moves past its votes."""
    done = svc.store.usable_votes_since(int(svc.store.get_state(TRAINED_THROUGH, 0)))
    if finished_rounds(svc, after_id):
        return 0
    return max(votes_per_round - done, 0)


def last_vote_of(svc, round_id: int) -> int:
    """The newest vote round ``round_id`` read (0 before any round)."""
    if not round_id:
        return 0
    read = svc.store.round_last_vote(round_id)
    return int((svc.store.get_state(TRAINED_THROUGH, 0) if read is None else read) or 0)


def answers_read_since(svc, vote_id: int) -> int:
    """Answers the oracle read for its votes after ``vote_id``: each rank set's answers,
    two per A/B pair."""
    rows = svc.store.query("select p.answers from votes v join pairs p on p.id = v.pair_id "
                           "where v.id > ? and v.annotator = ?", [vote_id, ANNOTATOR])
    return sum(len(json.loads(r["answers"])) if r["answers"] else 2 for r in rows)


def settings_of(train_cfg, pool_cfg, model_cfg, sampling_cfg, *, pairs_per_round: int,
                samples: int, eval_prompts: int, seed: int, labels: dict | None = None) -> dict:
    """What a run is made with, stored in learning_curve.json (``--resume`` checks it):
    the simulate flags, ``labels`` and every field of the model, sampling, pool and
    training settings but the model cache dir (where the model is kept, not what it is)."""
    fields = {}
    for cfg in (model_cfg, sampling_cfg, pool_cfg, train_cfg):
        fields.update(asdict(cfg))
    fields.pop("cache_dir", None)
    return {**(labels or {}), **fields, "pairs_per_round": pairs_per_round,
            "samples_per_prompt": samples, "eval_prompts": eval_prompts, "seed": seed}


def short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a whole system prompt is a setting)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def resume_state(out_dir: Path, settings: dict) -> tuple[list[dict], list[dict], float]:
    """(round rows, evaluation answers, seconds spent) of the stopped run in ``out_dir``,
    to continue it; ValueError if there is none or it ran with other settings."""
    path = out_dir / "learning_curve.json"
    if not path.exists():
        raise ValueError(f"--resume: {path} does not exist; there is no stopped run to "
                         "continue there (leave out --resume to start one)")
    prior = json.loads(path.read_text(encoding="utf-8"))
    changed = [f"{k}={short(prior['settings'][k])} (now {short(v)})"
               for k, v in settings.items() if k in prior["settings"] and prior["settings"][k] != v]
    if changed:
        raise ValueError(f"--resume: the run in {out_dir} was made with {', '.join(changed)}; "
                         "give the same settings to continue it")
    answers = read_jsonl(out_dir / "answers.jsonl") if (out_dir / "answers.jsonl").exists() \
        else []
    rows = prior["rounds"]
    return rows, [a for a in answers if a["round"] < len(rows)], float(prior["seconds"])


def vote_until_round(svc, oracle, votes: int, timeout_s: float, on_vote=None,
                     after_id: int | None = None) -> dict:
    """Vote on ``votes`` pairs or rank sets (``vote_mode``), then wait for the trainer
    thread's round to finish: the first to finish after round ``after_id`` (default: the
    newest round now). ``on_vote(cast)`` is called after each vote (a progress bar).
    Returns the round's row with ``answers_read`` added."""
    last = (max((r["id"] for r in svc.store.list_rounds(limit=1)), default=0)
            if after_id is None else after_id)
    cast, read, t0 = 0, 0, time.time()
    while cast < votes:
        if time.time() - t0 > timeout_s:
            raise TimeoutError(f"only {cast}/{votes} votes in {timeout_s:.0f} s")
        item = svc.next_item(ANNOTATOR)
        if item is None:
            time.sleep(0.2)
            continue
        read += cast_vote(svc, oracle, item)
        cast += 1
        if on_vote:
            on_vote(cast)
    while time.time() - t0 < timeout_s:
        done = finished_rounds(svc, last)
        if done:
            return {**done[0], "answers_read": read}
        time.sleep(0.5)
    raise TimeoutError(f"no round finished within {timeout_s:.0f} s")


def run(svc, oracle, *, rounds: int, pairs_per_round: int, eval_prompts: list[str],
        samples: int, out_dir: Path, seed: int = 0, timeout_s: float = 3600,
        progress=None, labels: dict | None = None, resume: bool = False) -> dict:
    """Run the loop for ``rounds`` rounds; write learning_curve.json / .png, answers.jsonl.

    Each round row has the win rate vs base, the KL per token, the share of serving's
    and of base's answers that end by themselves (``ended``, ``ended_base``) and
    ``answers_read``, what the votes so far cost a person (two answers per A/B vote, N
    per rank-of-N vote).
    ``progress`` gets (votes cast, votes per round, "round r/R ... last win rate").

    Each round is exactly ``pairs_per_round`` votes, then one DPO round on them: the
    service must start a round at that many votes (``votes_per_round``). Otherwise the
    trainer would start rounds while the oracle is still voting, and which votes a round
    sees would depend on thread timing.

    ``labels`` (e.g. the oracle's name) are stored with the settings. ``resume`` continues
    a stopped run whose database and ``out_dir`` files are still there, up to ``rounds``
    (``resume_state``): its settings must be the same; the votes it had cast for an
    unfinished round count towards that round, which the restarted service trains on.
    """
    if rounds < 0 or samples < 1 or pairs_per_round < 1:
        raise ValueError(f"--rounds {rounds}, --samples-per-prompt {samples}, --pairs-per-round "
                         f"{pairs_per_round}: need rounds >= 0 and the other two >= 1")
    if svc.train_cfg.votes_per_round != pairs_per_round:
        raise ValueError(f"pairs_per_round={pairs_per_round} but the service starts a round "
                         f"every votes_per_round={svc.train_cfg.votes_per_round} votes: set "
                         "both to the same number (app.py simulate does)")
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_of(svc.train_cfg, svc.pool_cfg, svc.model_cfg, svc.sampling,
                           pairs_per_round=pairs_per_round, samples=samples,
                           eval_prompts=len(eval_prompts), seed=seed, labels=labels)
    history, answers, spent = resume_state(out_dir, settings) if resume else ([], [], 0.0)
    t0 = time.time() - spent
    if len(history) > rounds:  # a resumed run that had done all its rounds
        return _result(history, settings, t0)
    base_answers = svc.sampler.sample([p for p in eval_prompts for _ in range(samples)],
                                      BASE, seed + 1)
    ended_base = round(measure(base_answers).healthy, 3)
    last = history[-1]["win_rate"] if history else None
    read = history[-1]["answers_read"] if history else 0
    first = len(history)
    for r in range(first, rounds + 1):
        if r > 0:
            votes, after, earlier = pairs_per_round, None, 0
            if resume and r == first:  # the stopped run's unfinished round
                after = history[-1].get("round_id", 0)
                votes = votes_left(svc, after, pairs_per_round)
                earlier = answers_read_since(svc, last_vote_of(svc, after))
            desc = f"round {r}/{rounds}: votes cast (last win rate {last:.0%})"
            tick = (lambda n, d=desc, c=pairs_per_round - votes:
                    progress.update(n + c, pairs_per_round, d)) if progress else None
            rnd = vote_until_round(svc, oracle, votes, timeout_s, on_vote=tick, after_id=after)
            read += earlier + rnd["answers_read"]
        ev = evaluate(svc, oracle, eval_prompts, samples, seed + 1000 * r, base_answers)
        last = ev.win_rate
        row = {"round": r, "serving": svc.policy.serving, "win_rate": ev.win_rate,
               "answers_read": read,
               "kl_per_token": ev.kl_per_token, "eval_samples": ev.n,
               "mean_chars": round(ev.mean_chars, 1), "ended": round(ev.ended, 3),
               "ended_base": ended_base,
               "oracle_measure": ev.measure, "examples": ev.examples,
               "elapsed_s": round(time.time() - t0, 1)}
        if r > 0:
            row.update({"round_id": rnd["id"], "round_status": rnd["status"],
                        "round_error": rnd.get("error"), "round_check": round_check(rnd)})
        history.append(row)
        answers += [{"round": r, "serving_version": row["serving"], **a} for a in ev.answers]
        log.info("simulate: %s", {k: v for k, v in row.items() if k != "examples"})
        _write(out_dir, _result(history, settings, t0), answers)  # a crash keeps what it has
    return _result(history, settings, t0)


def _result(history: list[dict], settings: dict, t0: float) -> dict:
    return {"rounds": history, "settings": settings, "seconds": round(time.time() - t0, 1)}


def _write(out_dir: Path, result: dict, answers: list[dict]) -> None:
    """learning_curve.json, answers.jsonl (every evaluation answer) and the plot, each
    atomically (each row of the JSONL names its round, so the files may differ by one)."""
    atomic_write(out_dir / "answers.jsonl", jsonl_text(answers))  # first: a resume reads
    atomic_write_json(out_dir / "learning_curve.json", result)  # the rounds this one lists
    atomic_write(out_dir / "learning_curve.png", plot_png(result["rounds"]))


def plot_png(history: list[dict]) -> bytes:
    """The learning curve (win rate vs base, KL per token, per round) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(rounds, [100 * h["win_rate"] for h in history], "o-", color="tab:blue")
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("round")
    ax.set_ylabel("oracle win rate vs base (%)", color="tab:blue")
    ax.set_ylim(0, 100)
    ax2 = ax.twinx()
    ax2.plot(rounds, [h["kl_per_token"] for h in history], "s--", color="tab:red")
    ax2.set_ylabel("KL(policy || base) per token", color="tab:red")
    ax.set_title("LiveDPO learning curve")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
