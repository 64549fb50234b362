"""Command line: ``python app.py [serve|status|import-prompts|import-prefs|export|...]``.

Every setting of every config area (trainer/config.py) is also a flag (``--beta``,
``--lora-r`` ...). Precedence: defaults < environment (LIVEDPO_*) < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from app import commands
from app.auth import ROLES
from app.config import AREAS, AppConfig
from trainer import config as C
from trainer.config import MODEL_AREAS
from trainer.model.modelcache import fitting_settings


def _add_area_flags(p: argparse.ArgumentParser, areas) -> None:
    for cls in areas:
        g = p.add_argument_group(cls.__name__.replace("Config", "").lower())
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            kind = type(f.default)
            g.add_argument(flag, dest=f.name, default=None,
                           type=(lambda s: s) if kind is bool else kind,
                           choices=f.metadata.get("choices"), help=f.metadata["help"])


# Every subcommand and the function that runs it; build_parser() declares the same names
# (tests/test_cli.py keeps the two in step).
COMMANDS = {"serve": commands.serve, "status": commands.status,
            "import-prompts": commands.import_prompts, "import-prefs": commands.import_prefs,
            "export": commands.export, "generate": commands.generate, "train": commands.train,
            "simulate": commands.simulate, "add-user": commands.add_user,
            "import-adapter": commands.import_adapter, "export-model": commands.export_model}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description="LiveDPO: live human-in-the-loop DPO")
    sub = p.add_subparsers(dest="command")

    def cmd(name: str, help: str, model: bool = False) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help)
        s.add_argument("--data-dir", dest="data_dir", default=None, help=C.help_of(
            AppConfig, "data_dir") + " (env LIVEDPO_DATA_DIR)")
        if model:
            _add_area_flags(s, MODEL_AREAS.values())
        else:  # the common options, accepted (and ignored where unused) everywhere
            for name_ in ("model", "device", "quantize"):
                s.add_argument("--" + name_, default=None, help=C.help_of(C.ModelConfig, name_))
        return s

    s = cmd("serve", "Run the web app, pair pool and trainer (the default command).", True)
    s.add_argument("--host", default=None, help=C.help_of(AppConfig, "host"))
    s.add_argument("--port", type=int, default=None, help=C.help_of(AppConfig, "port"))
    s.add_argument("--auth-file", dest="auth_file", default=None,
                   help=C.help_of(AppConfig, "auth_file"))
    s.add_argument("--guidelines-file", dest="guidelines_file", default=None,
                   help=C.help_of(AppConfig, "guidelines_file"))
    s.add_argument("--no-auth", dest="no_auth", action="store_true", default=None,
                   help=C.help_of(AppConfig, "no_auth"))
    s = cmd("status", "Counts and adapter versions.")
    s.add_argument("--json", action="store_true", help="Print JSON.")
    s = cmd("import-prompts", "Add prompts from a .txt, .jsonl or .csv file.")
    s.add_argument("file")
    s = cmd("import-prefs", "Add preferences (TRL DPO/KTO JSONL or a votes CSV).")
    s.add_argument("file")
    s = cmd("export", "Write preferences or votes to a file.")
    s.add_argument("--format", required=True, choices=("dpo", "kto", "votes", "audit"))
    s.add_argument("--out", required=True)
    s = cmd("export-model", "Write an adapter version merged into the base weights: a "
            "standalone Hugging Face checkpoint with tokenizer and model card.", True)
    s.add_argument("--version", required=True, help="The adapter version, e.g. v3.")
    s.add_argument("--out", required=True, help="A new directory for the checkpoint.")
    s = cmd("generate", "Print pairs sampled from the serving adapter.", True)
    s.add_argument("--prompt", required=True)
    s.add_argument("--n", type=int, default=1)
    s.add_argument("--json", action="store_true")
    s = cmd("train", "Run DPO rounds headless on the stored votes.", True)
    s.add_argument("--rounds", type=int, default=1)
    s = cmd("simulate", "Run the real loop with a scripted annotator; plot the learning "
            "curve (win rate vs base and KL per round).", True)
    s.add_argument("--oracle", required=True, help="shorter | keyword | positive | "
                   "package.module:function (func(prompt, a, b) -> a|b|tie|both_bad)")
    s.add_argument("--keyword", default="because", help="Keyword for --oracle keyword.")
    s.add_argument("--keyword-tiebreak", dest="keyword_tiebreak", default="tie",
                   choices=("shorter", "tie"), help="--oracle keyword, when both or neither "
                   "answer mention it: the shorter wins, or a tie (no pairwise example, so only the "
                   "keyword teaches; with --loss kto a tie marks both answers desirable).")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--prompts", default=None, help="Prompt file (.txt/.jsonl/.csv, as "
                   "import-prompts) to vote and evaluate on; default: the shipped prompts.")
    s.add_argument("--pairs-per-round", dest="pairs_per_round", type=int, default=32)
    s.add_argument("--eval-prompts", dest="eval_prompts", type=int, default=12,
                   help="Prompts held out from voting (spread over the file), used to "
                   "measure win rate.")
    s.add_argument("--samples-per-prompt", dest="samples_per_prompt", type=int, default=2)
    s.add_argument("--out", default=None, help="Output dir (default: DATA_DIR/simulate).")
    s.add_argument("--resume", action="store_true", help="Continue a stopped run in "
                   "--data-dir (same flags, --rounds may be higher): its rounds so far are "
                   "kept, the votes it cast for an unfinished round count towards it.")
    s = cmd("add-user", "Add (or update) a user in the auth file.")
    s.add_argument("name")
    s.add_argument("--role", choices=ROLES, default="annotator")
    s.add_argument("--auth-file", dest="auth_file", default=None,
                   help=C.help_of(AppConfig, "auth_file"))
    s.add_argument("--password", default=None, help="Password (prompted when omitted).")
    s = cmd("import-adapter", "Add an externally trained LoRA adapter as the next version.")
    s.add_argument("dir")
    s.add_argument("--serve", action="store_true", help="Also make it the serving version.")
    return p


def _read_system_prompt(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--system-prompt @{path}: cannot read it ({e}); give a readable "
                         "UTF-8 text file after @, or the text itself") from None


def resolve(args: argparse.Namespace) -> dict:
    """Build every config area from defaults < env < flags; one error lists all problems."""
    flags = {k: v for k, v in vars(args).items() if v is not None}
    model = flags.get("model") or os.environ.get("LIVEDPO_MODEL") or C.DEFAULT_MODEL
    for name, value in fitting_settings(model).items():  # e.g. longer answers for chat
        if name not in flags and f"LIVEDPO_{name.upper()}" not in os.environ:
            flags[name] = value
    system = flags.get("system_prompt") or os.environ.get("LIVEDPO_SYSTEM_PROMPT", "")
    if system.startswith("@"):
        flags["system_prompt"] = _read_system_prompt(system[1:])
    out, errors = {}, []
    for cls in AREAS.values():
        try:
            out[cls.__name__] = C.build(cls, overrides=flags)
        except ValueError as e:
            errors.append(str(e).replace("Invalid settings:\n", ""))
    if errors:
        raise ValueError("Invalid settings:\n" + "\n".join(errors))
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # CPU-kernel notices
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    from storage.errors import StoreError

    try:
        cfgs = resolve(args)
        return COMMANDS[args.command or "serve"](args, cfgs)
    except (ValueError, StoreError, FileNotFoundError, FileExistsError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
