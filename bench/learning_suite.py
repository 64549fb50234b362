"""The learning suite: does the loop learn preferences it was never tuned on, at the
app's defaults? (``python bench/learning.py --suite`` runs this.)

    python bench/learning.py --suite                       # Gemma 3 270M, 2 seeds, hours
    python bench/learning.py --suite --oracle mypkg.mod:fn # plus your own preference
    python bench/learning.py --suite --resume              # keep finished runs, continue
                                                           # a stopped one, do the rest
    python bench/learning.py --suite --modes pair:dpo      # A/B votes with DPO only

Each (oracle, seed) is one ``python app.py simulate`` run in a fresh data dir with NO
training flags: the real pool, SQLite, trainer thread and hot-swaps at the app's
defaults, with a scripted oracle instead of a person. The shipped oracles are
``shorter``, ``keyword --keyword because`` (tie-break tie: only the keyword decides) and
``positive``; ``--oracle pkg.mod:func`` adds plug-ins. Each runs in every ``--modes``
entry, VOTE_MODE:METHOD (default ``pair:dpo,rank:dpo``: the app's default method in
each vote mode; add ``rank:dno`` to compare DNO). A round's human budget is
counted in answers read, ``--answers-per-round`` (64): 32 A/B votes, or 16 rank-of-4
votes, so the modes are compared at the same cost to a person. Win rate vs base is
measured on held-out prompts, 16 x 4 = 64 comparisons per round.

Writes bench/results/learning-suite.json (rewritten after every run; each finished run
is also kept under bench/results/runs/learning-suite/MODEL/) and docs/learning-suite.png:

    {"runs": [{"oracle": "shorter", "seed": 0, "method": "dpo", "vote_mode": "pair",
               "minutes": 21.4, "answers_to_70": 64,
               "rounds": [{"round": 0, "win_rate": 0.48, "answers_read": 0,
                           "kl_per_token": 0.0, "ended": 0.61, "ended_base": 0.61}, ...]}]}
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, git_commit, machine, write_json
from storage.files import atomic_write, atomic_write_json

SHIPPED = {"shorter": ["--oracle", "shorter"],
           "keyword": ["--oracle", "keyword", "--keyword", "because",
                       "--keyword-tiebreak", "tie"],
           "positive": ["--oracle", "positive"]}
TARGET = 0.70
MODES = "pair:dpo,rank:dpo"  # the app's defaults in each vote mode (--method dpo)
RANK_SIZE = 4  # the app's default --rank-size
ROUND_KEYS = ("round", "win_rate", "answers_read", "kl_per_token", "ended", "ended_base",
              "serving", "round_status", "round_error", "round_check", "mean_chars",
              "oracle_measure")


def parse_modes(text: str) -> list[tuple[str, str]]:
    """[(vote_mode, method), ...] from 'pair:dpo,rank:dno'; exits naming a bad entry."""
    out = []
    for entry in filter(None, text.split(",")):
        mode, _, method = entry.partition(":")
        if mode not in ("pair", "rank") or method not in ("dpo", "dno"):
            sys.exit(f"--modes {entry!r}: write VOTE_MODE:METHOD with vote mode pair or rank "
                     "and method dpo or dno, e.g. pair:dpo,rank:dno")
        out.append((mode, method))
    return out


def votes_per_round(mode: str, answers: int) -> int:
    """Votes that cost ``answers`` answers read: 2 per A/B vote, RANK_SIZE per rank vote."""
    return max(answers // (2 if mode == "pair" else RANK_SIZE), 1)


def oracle_args(name: str) -> list[str]:
    """simulate's flags for a shipped oracle's name, or a ``pkg.mod:func`` plug-in."""
    return SHIPPED.get(name, ["--oracle", name])


def answers_to(rounds: list[dict], target: float = TARGET) -> int | None:
    """Answers read until the win rate first reached ``target`` (None: never)."""
    return next((r["answers_read"] for r in rounds if r["win_rate"] >= target), None)


def as_run(oracle: str, seed: int, curve: dict, minutes: float) -> dict:
    """One run of the suite's JSON from a simulate ``learning_curve.json``."""
    rounds = [{k: r.get(k) for k in ROUND_KEYS} for r in curve["rounds"]]
    st = curve.get("settings", {})
    return {"oracle": oracle, "seed": seed, "method": st.get("method", "dpo"),
            "vote_mode": st.get("vote_mode", "pair"),
            "minutes": round(minutes, 1), "answers_to_70": answers_to(rounds),
            "rounds": rounds, "settings": curve.get("settings", {})}


def simulate(model: str, oracle: str, seed: int, mode: tuple[str, str], args,
             extra: list[str], work: Path | None = None, commit: str | None = None,
             lock_fds: tuple[int, ...] = ()) -> dict:
    """One ``app.py simulate`` run; its progress bar goes to this terminal.

    It runs in ``work`` (its data dir and output; a temporary dir if None). With
    ``--resume``, a run a stop cut short there is continued (``simulate --resume``: the
    rounds it measured are kept); otherwise whatever is there is cleared first.
    Minutes count the stopped run's measured time too (not its model load, nor a round
    the stop cut short); ``commit`` is the code's, and a resumed run
    started by other code says so (``started_at_commit``). The child inherits
    ``lock_fds`` (``suite_lock``), so the suite stays locked while it runs."""
    votes = votes_per_round(mode[0], args.answers_per_round)
    resumable = work is not None  # a kept work dir, not a temporary one
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="livedpo-suite-")))
        curve_path = work / "out" / "learning_curve.json"
        resume = args.resume and curve_path.is_file() and (work / "data" / "livedpo.db").is_file()
        if not resume:
            shutil.rmtree(work / "data", ignore_errors=True)
            shutil.rmtree(work / "out", ignore_errors=True)
            work.mkdir(parents=True, exist_ok=True)
            atomic_write(work / "commit", commit or "")
        started = (work / "commit").read_text() if (work / "commit").is_file() else ""
        prior = json.loads(curve_path.read_text()) if resume else {"seconds": 0.0, "rounds": []}
        if resume and len(prior["rounds"]) > args.rounds:  # done; stopped before kept
            return as_run(oracle, seed, prior, prior["seconds"] / 60)
        if resume:
            print(f"{oracle} {mode[0]}:{mode[1]} seed {seed}: resuming after round "
                  f"{len(prior['rounds']) - 1} ({work})", flush=True)
        cmd = [sys.executable, str(ROOT / "app.py"), "simulate", *oracle_args(oracle),
               "--vote-mode", mode[0], "--method", mode[1], "--rank-size", str(RANK_SIZE),
               "--rounds", str(args.rounds), "--pairs-per-round", str(votes),
               "--eval-prompts", str(args.eval_prompts), "--samples-per-prompt",
               str(args.samples), "--data-dir", str(work / "data"), "--out", str(work / "out"),
               "--model", model, "--seed", str(seed), *(["--resume"] if resume else []), *extra]
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              pass_fds=lock_fds)
        if proc.returncode != 0:
            raise RuntimeError(f"simulate failed ({oracle}, seed {seed}, exit "
                               f"{proc.returncode}); its log is above"
                               + (f"; --resume continues it from {work}" if resumable else ""))
        curve = json.loads(curve_path.read_text())
    run = as_run(oracle, seed, curve, (prior["seconds"] + time.time() - t0) / 60)
    if resume:
        run["resumed_after_round"] = len(prior["rounds"]) - 1
        if started != (commit or ""):
            run["started_at_commit"] = started or None
    return run


def suite_root(model: str) -> Path:
    """Where the suite keeps its runs' data dirs for ``model`` while they run: under the
    model cache dir (``LIVEDPO_CACHE_DIR``)."""
    from trainer.config import default_cache_dir

    cache = os.environ.get("LIVEDPO_CACHE_DIR") or default_cache_dir()
    return Path(cache) / "learning-suite" / model


def work_dir(model: str, oracle: str, seed: int, mode: tuple[str, str]) -> Path:
    """Where a suite run keeps its data dir while it runs, so ``--resume`` can continue
    it after a stop: one per (oracle, mode, seed) under ``suite_root``."""
    return suite_root(model) / kept_path(model, oracle, seed, mode).stem


@contextlib.contextmanager
def suite_lock(model: str):
    """Hold ``model``'s suite for this process: its work dirs (``suite_root``) and its
    results in this checkout (``bench/results/runs/learning-suite/MODEL/``), so a second
    suite started beside it stops at once instead of clearing, resuming or overwriting
    the runs this one is writing. Yields the lock files' descriptors, which each
    ``app.py simulate`` child inherits: the locks are flocks, held until the last
    process holding them ends (the system drops them on kill -9)."""
    import fcntl

    with contextlib.ExitStack() as stack:
        fds = []
        for path in (suite_root(model) / ".lock", kept_dir(model) / ".lock"):
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context(open(path, "a", encoding="utf-8"))
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                sys.exit(f"another `bench/learning.py --suite` is running with {model} (it "
                         f"holds {path}); wait for it to end (a one-off check can run "
                         "beside it with --json PATH --plot PATH: temporary dirs, nothing "
                         "kept)")
            fds.append(fh.fileno())
        yield tuple(fds)


def kept_dir(model: str) -> Path:
    """Where the suite keeps each finished run of ``model`` in this checkout."""
    return RESULTS / "runs" / "learning-suite" / model


def kept_path(model: str, oracle: str, seed: int, mode: tuple[str, str]) -> Path:
    return kept_dir(model) / f"{oracle.replace(':', '.')}-{mode[0]}-{mode[1]}-seed{seed}.json"


def kept_run(path: Path, args, mode: tuple[str, str]) -> dict:
    """A finished run kept by an earlier suite, refused if its settings differ."""
    run = json.loads(path.read_text())
    st = run.get("settings", {})
    want = {"pairs_per_round": votes_per_round(mode[0], args.answers_per_round),
            "samples_per_prompt": args.samples, "eval_prompts": args.eval_prompts,
            "rounds": args.rounds, "vote_mode": mode[0], "method": mode[1]}
    have = {**st, "rounds": len(run["rounds"]) - 1, "vote_mode": run.get("vote_mode"),
            "method": run.get("method")}
    bad = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if bad:
        sys.exit(f"--resume: {path} was run with other settings ((kept, now): {bad}); "
                 "delete it or run with the same flags")
    return run


def summary(runs: list[dict]) -> str:
    """A table: one row per run, win rate per round, answers to 70%, health, minutes."""
    n = max(len(r["rounds"]) for r in runs)
    lines = ["| oracle | mode | seed | " + " | ".join(f"r{i}" for i in range(n))
             + " | answers to 70% | ended (base -> final) | KL/token | min |",
             "|" + "---|" * (n + 7)]
    for r in runs:
        last = r["rounds"][-1]
        wins = " | ".join(f"{x['win_rate']:.0%}" for x in r["rounds"])
        to_70 = "-" if r["answers_to_70"] is None else r["answers_to_70"]
        lines.append(f"| {r['oracle']} | {r['vote_mode']}:{r['method']} | {r['seed']} | "
                     f"{wins} | {to_70} | "
                     f"{last['ended_base']:.0%} -> {last['ended']:.0%} | "
                     f"{last['kl_per_token']:.3f} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def plot_png(runs: list[dict]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for r in runs:
        ax.plot([x["answers_read"] for x in r["rounds"]],
                [100 * x["win_rate"] for x in r["rounds"]], "o-",
                label=f"{r['oracle']} {r['vote_mode']}:{r['method']} (seed {r['seed']})")
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.axhline(100 * TARGET, color="tab:green", lw=0.8, ls=":")
    ax.set(xlabel="answers read by the annotator", ylabel="win rate vs base (%)",
           ylim=(0, 100), title="LiveDPO learning suite (app defaults)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(args, extra: list[str], model: str, name: str) -> None:
    oracles = [*SHIPPED, *(args.oracle or [])]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.json) if args.json else RESULTS / "learning-suite.json"
    png = Path(args.plot) if args.plot else ROOT / "docs" / "learning-suite.png"
    modes = parse_modes(args.modes)
    commit = git_commit()  # the code this suite's new runs import (kept ones keep theirs)
    with contextlib.nullcontext(()) if args.json else suite_lock(name) as lock_fds:
        runs = run_all(oracles, modes, seeds, args, extra, model, name, out, commit, lock_fds)
    atomic_write(png, plot_png(runs))
    print(summary(runs))
    print(f"wrote {out} and {png}")


def run_all(oracles: list[str], modes: list[tuple[str, str]], seeds: list[int], args,
            extra: list[str], model: str, name: str, out: Path, commit: str,
            lock_fds: tuple[int, ...] = ()) -> list[dict]:
    """Every (oracle, mode, seed) run in turn; ``out`` is rewritten after each.
    ``lock_fds`` (``suite_lock``'s) are handed to each simulate child."""
    runs = []
    for oracle, mode, seed in ((o, m, s) for o in oracles for m in modes for s in seeds):
        label = f"{oracle} {mode[0]}:{mode[1]} seed {seed}"
        kept = kept_path(name, oracle, seed, mode)
        if args.resume and kept.is_file():
            runs.append(kept_run(kept, args, mode))
            print(f"{label}: kept from {kept}", flush=True)
            continue
        work = None if args.json else work_dir(name, oracle, seed, mode)
        run = {**simulate(model, oracle, seed, mode, args, extra, work, commit, lock_fds),
               "commit": commit}
        if not args.json:  # the real suite keeps each run; smoke runs write only --json
            write_json(str(kept.relative_to(RESULTS)), run)
            shutil.rmtree(work, ignore_errors=True)  # the kept JSON holds what it measured
        runs.append(run)
        print(f"{label}: " + " ".join(f"{x['win_rate']:.0%}" for x in run["rounds"])
              + f"  ({run['minutes']:.1f} min)", flush=True)
        atomic_write_json(out, {"machine": machine(), "model": name, "extra_flags": extra,
                                "runs": runs})
    return runs
