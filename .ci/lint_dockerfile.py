#!/usr/bin/env python3
"""Check that the Dockerfile has the instructions LiveDPO's deployment relies on.

Not a general Dockerfile linter (CI runs hadolint for that when it can be installed):
this checks the project's own contract, which no docker daemon is needed to verify.

Usage: python3 .ci/lint_dockerfile.py [Dockerfile]
Exit status 0 when every check passes, 1 otherwise (each problem printed).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

EXPECTED_CMD = ["python", "app.py", "serve", "--host", "0.0.0.0", "--auth-file",
                "/data/users.json"]
EXPECTED_ENV = {"LIVEDPO_DATA_DIR": "/data", "LIVEDPO_CACHE_DIR": "/cache"}
EXPECTED_VOLUMES = {"/data", "/cache"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) for each instruction, with continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def parse_list(args: str) -> list[str]:
    """Arguments in exec (JSON) form, or split shell-style."""
    if args.startswith("["):
        return json.loads(args)
    return shlex.split(args)


def parse_env(args: str) -> dict[str, str]:
    """ENV in key=value form (the legacy 'ENV key value' form too)."""
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    return dict(p.split("=", 1) for p in parts if "=" in p)


def problems(text: str) -> list[str]:
    """Every way the Dockerfile misses the contract."""
    ins = instructions(text)
    kinds = [k for k, _ in ins]
    found: list[str] = []
    froms = [a for k, a in ins if k == "FROM"]
    if not froms or not re.search(r"cuda|pytorch", froms[-1], re.I):
        found.append("FROM: the final stage must use a CUDA (nvidia/cuda or pytorch) base image")
    env: dict[str, str] = {}
    for k, a in ins:
        if k == "ENV":
            env.update(parse_env(a))
    for key, value in EXPECTED_ENV.items():
        if env.get(key) != value:
            found.append(f"ENV: {key}={value} is missing (found {env.get(key)!r})")
    volumes = {v for k, a in ins if k == "VOLUME" for v in parse_list(a)}
    missing = EXPECTED_VOLUMES - volumes
    if missing:
        found.append(f"VOLUME: {sorted(missing)} not declared (found {sorted(volumes)})")
    if not any(k == "EXPOSE" and "7860" in a.split() for k, a in ins):
        found.append("EXPOSE 7860 is missing")
    if "HEALTHCHECK" not in kinds:
        found.append("HEALTHCHECK is missing")
    users = [a.split(":")[0] for k, a in ins if k == "USER"]
    if not users or users[-1] in ("root", "0"):
        found.append("USER: the image must end up running as a non-root user")
    cmds = [a for k, a in ins if k == "CMD"]
    if not cmds or parse_list(cmds[-1]) != EXPECTED_CMD:
        found.append(f"CMD must be {json.dumps(EXPECTED_CMD)}")
    if "requirements.txt" not in text:
        found.append("requirements.txt is never installed")
    return found


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "Dockerfile")
    if not path.is_file():
        print(f"lint_dockerfile: {path} not found")
        return 1
    found = problems(path.read_text(encoding="utf-8"))
    for p in found:
        print(f"{path}: {p}")
    print(f"lint_dockerfile: {path}: {'OK' if not found else f'{len(found)} problem(s)'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
