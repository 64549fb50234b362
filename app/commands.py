"""What each ``app.py`` subcommand does. Model-free commands never load torch."""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

from app.config import AppConfig


def _cli_user() -> str:
    """Who ran a command line action, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (some containers)
        return "cli"


def open_store(app_cfg: AppConfig):
    """The data dir's store, seeded with the default prompts on first use."""
    from storage.db import Store
    from storage.seed import seed_default_prompts

    store = Store.open(app_cfg.data_dir)
    seed_default_prompts(store, app_cfg.max_prompt_chars)
    return store


def make_service(cfgs: dict, terminal_progress: bool = True):
    """The service (store, model, pool, trainer) for the resolved config areas."""
    from trainer.service import Service

    app = cfgs["AppConfig"]
    return Service(open_store(app), Path(app.data_dir), cfgs["ModelConfig"],
                   cfgs["SamplingConfig"], cfgs["PoolConfig"], cfgs["TrainConfig"],
                   max_prompt_chars=app.max_prompt_chars, terminal_progress=terminal_progress)


def status(args, cfgs: dict) -> int:
    store = open_store(cfgs["AppConfig"])
    counts = store.counts()
    out = {**counts, "serving_adapter": store.serving_adapter(),
           "adapters": [{k: a[k] for k in ("version", "parent_version", "status", "created")}
                        for a in store.list_adapters()],
           "rounds": counts.get("rounds", 0),
           "data_dir": str(Path(cfgs["AppConfig"].data_dir).resolve()),
           "agreement": store.agreement()}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"data dir        {out['data_dir']}")
        for k in ("prompts", "pairs", "pairs_ready", "votes", "annotators", "rounds"):
            print(f"{k:<15} {out.get(k, 0)}")
        print(f"serving adapter {out['serving_adapter']}")
        print("adapters        " + (", ".join(f"{a['version']} ({a['status']})"
                                             for a in out["adapters"]) or "none"))
        alpha = out["agreement"]["krippendorff_alpha"]
        print("agreement       " + (f"Krippendorff's alpha {alpha['value']:.2f} on "
                                    f"{alpha['n']} pairs judged twice or more"
                                    if alpha["value"] is not None else
                                    "no pair judged by two annotators yet"))
    return 0


def import_prompts(args, cfgs: dict) -> int:
    from storage.io import import_prompts as do_import

    store = open_store(cfgs["AppConfig"])
    n = do_import(store, args.file, max_chars=cfgs["AppConfig"].max_prompt_chars)
    store.audit(_cli_user(), "import_prompts", file=str(args.file), new_prompts=n)
    print(f"imported {n} new prompt(s) from {args.file}")
    return 0


def import_prefs(args, cfgs: dict) -> int:
    from storage.io import import_prefs as do_import

    store = open_store(cfgs["AppConfig"])
    counts = do_import(store, args.file)
    store.audit(_cli_user(), "import_prefs", file=str(args.file), **counts)
    print(f"imported from {args.file}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def export(args, cfgs: dict) -> int:
    from storage.io import export as do_export

    store = open_store(cfgs["AppConfig"])
    n = do_export(store, args.format, args.out)
    print(f"wrote {n} row(s) to {args.out}")
    return 0


def add_user(args, cfgs: dict) -> int:
    from app.auth import add_user as do_add
    from storage.db import DB_NAME

    path = args.auth_file or cfgs["AppConfig"].auth_file
    if not path:
        raise ValueError("add-user needs --auth-file FILE (or env LIVEDPO_AUTH_FILE)")
    password = args.password
    if password is None:
        if not sys.stdin.isatty():
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass(f"Password for {args.name}: ")
            if getpass.getpass("Repeat: ") != password:
                raise ValueError("the two passwords differ; nothing was written")
    do_add(path, args.name, password, args.role)
    print(f"user {args.name!r} ({args.role}) written to {path}")
    data = Path(cfgs["AppConfig"].data_dir)
    if (data / DB_NAME).is_file():  # the data dir this app serves: log it there
        open_store(cfgs["AppConfig"]).audit(_cli_user(), "user_add", user=args.name,
                                            role=args.role)
    return 0


def import_adapter(args, cfgs: dict) -> int:
    from trainer.model import adapters

    app = cfgs["AppConfig"]
    store = open_store(app)
    version = store.next_adapter_version()
    path = adapters.copy_in(Path(args.dir), Path(app.data_dir) / "adapters", version,
                            {"version": version, "source": str(Path(args.dir).resolve())})
    store.add_adapter(version, str(path), parent_version=None, round_id=None, status="ready",
                      metrics=adapters.read_metadata(path).get("metrics"))
    if args.serve:
        store.set_serving_adapter(version)
    store.audit(_cli_user(), "import_adapter", dir=str(args.dir), version=version,
                serve=bool(args.serve))
    print(f"imported {args.dir} as {version}" + (" (now serving)" if args.serve else ""))
    return 0


def export_model(args, cfgs: dict) -> int:
    """``export-model --version vN --out DIR``: a merged, standalone HF checkpoint."""
    from app.modelcard import card_facts, render_card
    from trainer.model.merge import merge_version
    from trainer.progress import TqdmProgress

    store = open_store(cfgs["AppConfig"])
    row = store.get_adapter(args.version)
    if row is None or row["status"] not in ("ready", "saved"):
        known = ", ".join(a["version"] for a in store.list_adapters()
                          if a["status"] == "ready") or "none yet"
        raise ValueError(f"--version {args.version!r}: no such trained version in this data "
                         f"dir (ready versions: {known}); 'base' needs no export, it is "
                         "--model itself")
    path = Path(row["path"])
    model = cfgs["ModelConfig"]
    card = render_card(card_facts(store, args.version, model.model))
    out = merge_version(model, path, Path(args.out), card, TqdmProgress())
    print(f"wrote {args.version} merged into {model.model} to {out}")
    return 0


def generate(args, cfgs: dict) -> int:
    from trainer.pool import PlannedPair

    svc = make_service(cfgs)
    svc.start(background=False, pool=False, trainer=False)
    svc.require_ready()
    pid = svc.store.add_prompt(args.prompt, source="user",
                               max_chars=cfgs["AppConfig"].max_prompt_chars)
    ids = svc.pool.produce([PlannedPair(pid, args.prompt, False) for _ in range(args.n)], None)
    pairs = [svc.store.get_pair(i) for i in ids]
    if args.json:
        print(json.dumps([{k: p[k] for k in ("id", "prompt", "response_a", "response_b",
                                             "version_a", "version_b", "seed")}
                          for p in pairs], indent=2))
    else:
        for p in pairs:
            print(f"--- pair {p['id']} ({p['version_a']}) ---\n[A] {p['response_a']}\n"
                  f"[B] {p['response_b']}\n")
    return 0


def train(args, cfgs: dict) -> int:
    svc = make_service(cfgs)
    svc.start(background=False, pool=False, trainer=False)
    svc.require_ready()
    worst = 0
    for i in range(args.rounds):
        outcome = svc.trainer.run_one("cli")
        acc = outcome.metrics.get("heldout_after", {}).get("accuracy")
        print(f"round {outcome.round_id} ({i + 1}/{args.rounds}): {outcome.status}"
              + (f" -> {outcome.version}" if outcome.version else "")
              + (f", held-out accuracy {acc:.3f}" if acc is not None else "")
              + (f"\n  {outcome.error}" if outcome.error else ""))
        worst = max(worst, 1 if outcome.status == "failed" else 0)
    return worst


def check_exposure(app: AppConfig) -> None:
    """Refuse to serve other machines without logins, before the model loads: without an
    auth file the one user is an admin. A missing or corrupt auth file fails here too."""
    import ipaddress

    from app.auth import load_users

    if app.auth_file:
        load_users(app.auth_file)
        return
    try:
        loopback = app.host == "localhost" or ipaddress.ip_address(app.host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return
    if app.no_auth:
        print(f"WARNING: serving on {app.host} without an auth file (--no-auth): everyone "
              "who can reach the port is an admin.", file=sys.stderr)
        return
    users = "/data/users.json" if os.environ.get("LIVEDPO_IN_DOCKER") else "users.json"
    raise ValueError(
        f"--host {app.host} serves the app to other machines, and without --auth-file "
        "everyone who reaches it is an admin (rollback, settings, imports, downloads). "
        "Create the first admin, then pass the file:\n"
        f"  python app.py add-user NAME --role admin --auth-file {users}\n"
        f"  python app.py serve --host {app.host} --auth-file {users}\n"
        "or serve on 127.0.0.1, or add --no-auth to expose it anyway.")


def serve(args, cfgs: dict) -> int:
    from app.ui import launch

    check_exposure(cfgs["AppConfig"])
    svc = make_service(cfgs)
    svc.start(background=True)
    launch(svc, cfgs["AppConfig"])
    return 0


def simulate(args, cfgs: dict) -> int:
    """The real loop (pool, DB, trainer thread, hot-swap) with a scripted annotator."""
    import dataclasses

    from storage.db import Store
    from storage.io import read_prompts
    from storage.seed import DEFAULT_PROMPTS, SEEDED_KEY
    from trainer.progress import TqdmProgress
    from trainer.service import Service
    from trainer.sim import simulate as sim
    from trainer.sim.oracles import checked, load_oracle

    app = cfgs["AppConfig"]
    oracle = checked(load_oracle(args.oracle, args.keyword, args.keyword_tiebreak))
    prompts = read_prompts(args.prompts or DEFAULT_PROMPTS, app.max_prompt_chars)
    held_out, voted = sim.split_prompts(prompts, args.eval_prompts)
    data_dir = Path(app.data_dir)
    out = Path(args.out) if args.out else data_dir / "simulate"
    has_db = (data_dir / "livedpo.db").exists()
    if has_db and not args.resume:
        raise ValueError(f"--data-dir {data_dir} already has a database; simulate needs a "
                         "fresh one (e.g. --data-dir data-sim-1) so the oracle's votes do "
                         "not mix with real ones, or --resume to continue the run there")
    if args.resume and not (has_db and (out / "learning_curve.json").exists()):
        raise ValueError(f"--resume: no stopped simulate run in --data-dir {data_dir} "
                         f"(it needs livedpo.db and {out / 'learning_curve.json'}); leave out "
                         "--resume to start one")
    train = dataclasses.replace(cfgs["TrainConfig"], votes_per_round=args.pairs_per_round)
    labels = {"oracle": args.oracle, "keyword": args.keyword,
              "keyword_tiebreak": args.keyword_tiebreak, "prompts_file": args.prompts}
    if args.resume:  # before anything loads or trains: same settings, oracle votes only
        sim.resume_state(out, sim.settings_of(
            train, cfgs["PoolConfig"], cfgs["ModelConfig"], cfgs["SamplingConfig"],
            pairs_per_round=args.pairs_per_round, samples=args.samples_per_prompt,
            eval_prompts=len(held_out), seed=train.seed, labels=labels))
    store = Store.open(data_dir)
    if args.resume:
        people = store.one("select count(*) as n from votes where annotator != ?",
                           [sim.ANNOTATOR])["n"]
        if people:
            raise ValueError(f"--resume: --data-dir {data_dir} holds {people} votes by people, "
                             "not only a simulate run's; point --data-dir at the run's own dir")
    else:
        store.add_prompts(voted, source="default")
        store.set_state(SEEDED_KEY, True)
    svc = Service(store, data_dir, cfgs["ModelConfig"], cfgs["SamplingConfig"],
                  cfgs["PoolConfig"], train, max_prompt_chars=app.max_prompt_chars)
    svc.start(background=False)
    svc.require_ready()
    bar = TqdmProgress("vote")
    try:
        result = sim.run(svc, oracle, rounds=args.rounds, pairs_per_round=args.pairs_per_round,
                         eval_prompts=held_out, samples=args.samples_per_prompt, out_dir=out,
                         seed=train.seed, progress=bar, labels=labels, resume=args.resume)
    finally:
        bar.close()
        svc.stop()
    for r in result["rounds"]:
        print(f"round {r['round']}: serving {r['serving']:<5} win rate {r['win_rate']:.0%}  "
              f"KL/token {r['kl_per_token']:.4f}  {r.get('round_status', '')}")
    return 0
