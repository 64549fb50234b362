"""Learning curves across loss types and references: does live DPO learn, and which setup?

    python bench/learning.py                                   # tiny random model, minutes
    python bench/learning.py --model gemma-3-270m --seeds 0    # the real default model
    python bench/learning.py --suite                           # the learning suite (below)

Each configuration (loss x reference x seed) runs ``python app.py simulate`` in its own
process and data dir: the real pair pool, SQLite, trainer thread and hot-swaps, with a
scripted oracle instead of a person. Prints a table of the oracle's win rate of the
serving adapter against base after every round, and the exact per-token KL to base;
writes bench/results/learning-<model>-<oracle>.json and docs/learning-<model>-<oracle>.png.

Each finished run is also kept at bench/results/runs/<stem>/<loss>-<reference>-seed<N>.json
at once, so an hour of Gemma runs survives a crash in the next one. ``--reuse FILE ...`` adds
earlier ``app.py simulate`` outputs (learning_curve.json) to the table; their settings must
match this run's (pairs per round, samples, eval prompts, rounds, model), else it refuses.

``--suite`` runs the learning suite instead: every shipped oracle (and plug-ins) at the
app's defaults; see bench/learning_suite.py.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import learning_suite
from bench.common import RESULTS, ROOT, machine, write_json
from storage.files import atomic_write

CONFIGS = [("nca_pair", "base"), ("nca_pair", "previous"), ("sigmoid", "base"),
           ("ipo", "base"), ("kto", "base")]
# The tiny model is random: it needs a large lr and short answers to move in a few rounds.
# Its weights have std 0.1, as in tests/test_simulate.py: at the default 0.02 its
# next-token distribution is uniform and no adapter moves it (KL <= ~0.03 per token).
TINY_STD = 0.1
TINY_FLAGS = ["--lr", "2e-2", "--max-new-tokens", "24", "--accept-tolerance", "1",
              "--ready-pairs", "8", "--batch-prompts", "8"]


def tiny_model(path: Path) -> Path:
    from trainer.testing import make_tiny_model_dir

    return path if (path / "config.json").is_file() else make_tiny_model_dir(
        path, init_std=TINY_STD)


def run_one(model: str, loss: str, reference: str, seed: int, args, extra: list[str]) -> dict:
    """One ``app.py simulate`` run in a fresh data dir; returns its learning_curve.json."""
    with tempfile.TemporaryDirectory(prefix="livedpo-learning-") as tmp:
        cmd = [sys.executable, str(ROOT / "app.py"), "simulate", "--oracle", args.oracle,
               "--rounds", str(args.rounds), "--pairs-per-round", str(args.pairs_per_round),
               "--eval-prompts", str(args.eval_prompts), "--samples-per-prompt",
               str(args.samples), "--data-dir", f"{tmp}/data", "--out", f"{tmp}/out",
               "--model", model, "--loss", loss, "--reference", reference, "--seed",
               str(seed), *extra]
        t = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"simulate failed ({loss}, {reference}, seed {seed}):\n"
                               f"{proc.stderr[-3000:]}")
        res = json.loads(Path(f"{tmp}/out/learning_curve.json").read_text())
    res.update({"loss": loss, "reference": reference, "seed": seed,
                "wall_s": round(time.time() - t, 1)})
    return res


def reused_run(path: Path, args, model_name: str) -> dict:
    """An earlier simulate output as a run of this table, refused if its settings differ."""
    res = json.loads(path.read_text())
    st = res["settings"]
    want = {"pairs_per_round": args.pairs_per_round, "samples_per_prompt": args.samples,
            "eval_prompts": args.eval_prompts, "model": model_name}
    bad = {k: (st.get(k), v) for k, v in want.items() if st.get(k) != v}
    if len(res["rounds"]) != args.rounds + 1:
        bad["rounds"] = (len(res["rounds"]) - 1, args.rounds)
    if bad:
        sys.exit(f"--reuse {path}: its settings differ from this run's "
                 f"(setting: (file, this run)) {bad}; rerun it with the same flags instead.")
    res.update({"loss": st["loss"], "reference": st["reference"],
                "seed": st.get("seed", 0), "wall_s": res.get("wall_s", res["seconds"]),
                "reused_from": str(path)})
    return res


def keep_run(stem: str, run: dict) -> None:
    """Write one finished run at once (atomically), before the next one starts."""
    write_json(f"runs/{stem}/{run['loss']}-{run['reference']}-seed{run['seed']}.json", run)


def summarise(runs: list[dict]) -> list[dict]:
    """Per configuration: mean win rate per round over seeds, final KL, wall time."""
    rows = []
    for loss, ref in dict.fromkeys((r["loss"], r["reference"]) for r in runs):
        mine = [r for r in runs if (r["loss"], r["reference"]) == (loss, ref)]
        n_rounds = len(mine[0]["rounds"])
        win = [statistics.mean(r["rounds"][i]["win_rate"] for r in mine) for i in range(n_rounds)]
        rows.append({"loss": loss, "reference": ref, "seeds": len(mine), "win_rate": win,
                     "final_win_rates": [r["rounds"][-1]["win_rate"] for r in mine],
                     "kl_final": statistics.mean(r["rounds"][-1]["kl_per_token"] for r in mine),
                     "chars": [statistics.mean(r["rounds"][i].get("mean_chars", float("nan"))
                                               for r in mine) for i in range(n_rounds)],
                     "ended": [statistics.mean(r["rounds"][i].get("ended", float("nan"))
                                               for r in mine) for i in range(n_rounds)],
                     "accepted": [sum(x.get("round_status") == "accepted" for x in r["rounds"])
                                  for r in mine],
                     "minutes": statistics.mean(r["wall_s"] for r in mine) / 60})
    return rows


def _share(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.0%}"  # runs from before 'ended' was recorded


def table(rows: list[dict]) -> str:
    n = len(rows[0]["win_rate"])
    head = ("| loss | reference | seeds | " + " | ".join(f"round {i}" for i in range(n))
            + " | final per seed | KL/token (final) | answer chars (0 -> final) "
            "| answers that end (0 -> final) | rounds accepted | minutes/run |")
    lines = [head, "|" + "---|" * (n + 9)]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['reference']} | {r['seeds']} | "
                     + " | ".join(f"{w:.0%}" for w in r["win_rate"])
                     + f" | {', '.join(f'{w:.0%}' for w in r['final_win_rates'])} | "
                     f"{r['kl_final']:.3f} | {r['chars'][0]:.0f} -> {r['chars'][-1]:.0f} | "
                     f"{_share(r['ended'][0])} -> {_share(r['ended'][-1])} | "
                     f"{', '.join(f'{a}/{n - 1}' for a in r['accepted'])} | "
                     f"{r['minutes']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for r in rows:
        ax.plot(range(len(r["win_rate"])), [100 * w for w in r["win_rate"]], "o-",
                label=f"{r['loss']}, ref {r['reference']}")
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="round", ylabel="oracle win rate vs base (%)", ylim=(0, 100), title=title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", action="store_true", help="The learning suite at the app's "
                    "defaults (bench/learning_suite.py): shorter, keyword, positive and any "
                    "--oracle plug-ins, 2 seeds, 5 rounds of 32 votes, the default model.")
    ap.add_argument("--model", default=None, help="'tiny' (random, built here), "
                    "'gemma-3-270m', or a local HF model dir (default: tiny; --suite: "
                    "gemma-3-270m)")
    ap.add_argument("--oracle", action="append", default=None, help="The oracle (default "
                    "shorter); with --suite, a plug-in added to the shipped three (repeatable).")
    ap.add_argument("--rounds", type=int, default=None, help="default 4; --suite 5")
    ap.add_argument("--pairs-per-round", type=int, default=None, help="default 48 (not "
                    "with --suite: it sets --answers-per-round)")
    ap.add_argument("--answers-per-round", type=int, default=64, help="--suite: a round's "
                    "human budget in answers read (64 = 32 A/B votes or 16 rank-of-4 votes)")
    ap.add_argument("--modes", default=learning_suite.MODES, help="--suite: VOTE_MODE:METHOD "
                    "entries, each run for every oracle and seed (default pair:dpo,rank:dpo, the "
                    "app's default method in each vote mode; add rank:dno to compare DNO)")
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=None,
                    help="Samples per held-out prompt (default 8; --suite 4).")
    ap.add_argument("--seeds", default=None, help="default 0,1,2; --suite 0,1")
    ap.add_argument("--configs", default=",".join(f"{lo}:{re}" for lo, re in CONFIGS),
                    help="loss:reference pairs, comma-separated")
    ap.add_argument("--reuse", nargs="*", default=[], type=Path,
                    help="earlier simulate outputs (learning_curve.json) to add to the table")
    ap.add_argument("--resume", action="store_true", help="--suite: keep the runs already "
                    "under bench/results/runs/learning-suite/, continue the one a stop cut "
                    "short (simulate --resume, from its data dir under the model cache dir) "
                    "and run the others")
    ap.add_argument("--json", default=None, help="--suite: write here instead of "
                    "bench/results/learning-suite.json (and keep no per-run files)")
    ap.add_argument("--plot", default=None, help="--suite: the plot's path "
                    "(default docs/learning-suite.png)")
    args, extra = ap.parse_known_args()
    suite = {"model": "gemma-3-270m", "rounds": 5, "samples": 4, "seeds": "0,1"}
    plain = {"model": "tiny", "rounds": 4, "pairs_per_round": 48, "samples": 8,
             "seeds": "0,1,2"}
    for key, value in (suite if args.suite else plain).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.suite and args.pairs_per_round is not None:
        sys.exit("--pairs-per-round: with --suite the budget is --answers-per-round")
    if not args.suite:
        if args.oracle and len(args.oracle) > 1:
            sys.exit("--oracle: give one oracle (several only with --suite)")
        args.oracle = (args.oracle or ["shorter"])[0]
    name = args.model
    if args.model == "tiny":
        model = str(tiny_model(Path(tempfile.gettempdir()) / f"livedpo-bench-tiny-std{TINY_STD}"))
        extra = [*TINY_FLAGS, *extra]
    else:
        model, name = args.model, Path(args.model).name
    if args.suite:
        learning_suite.main(args, extra, model, name)
        return
    configs = [tuple(c.split(":")) for c in args.configs.split(",") if c]
    stem = f"learning-{name}-{args.oracle.replace(':', '.')}"
    runs = [reused_run(p, args, name) for p in args.reuse]
    for loss, ref in configs:
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(run_one(model, loss, ref, seed, args, extra))
            r = runs[-1]
            keep_run(stem, r)
            print(f"{loss:8} {ref:8} seed {seed}: "
                  + " ".join(f"{x['win_rate']:.0%}" for x in r["rounds"])
                  + f"  ({r['wall_s'] / 60:.1f} min)", flush=True)
    rows = summarise(runs)
    print(table(rows))
    write_json(f"{stem}.json", {"machine": machine(), "model": name, "oracle": args.oracle,
                                "extra_flags": extra, "summary": rows, "runs": runs})
    plot(rows, ROOT / "docs" / f"{stem}.png",
         f"LiveDPO learning curves ({name}, oracle: {args.oracle})")
    print(f"wrote {RESULTS / f'{stem}.json'} and docs/{stem}.png")


if __name__ == "__main__":
    main()
