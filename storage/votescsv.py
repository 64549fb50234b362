"""The votes CSV: every vote with its pair, the one lossless export (rank sets and
their rankings included), and its import. Export -> import into a fresh DB -> export
gives a byte-identical file."""

from __future__ import annotations

import csv
import io
import json

from storage.common import CHOICES, now
from storage.errors import BadInput, ImportFailed
from storage.failpoints import failpoint
from storage.importrows import checked_prompt, ids_free, insert_pair, prompt_id
from storage.ranking import MAX_RANK, MIN_RANK, RANK_CHOICES, check_tiers
from storage.readers import Rows
from storage.votes import MAX_BETTER_ANSWER

VOTE_COLUMNS = ["pair_id", "prompt", "response_a", "response_b", "version_a", "version_b",
                "arena", "annotator", "choice", "better_answer", "decide_ms", "created",
                "end_a", "end_b", "answers", "ranking"]
# end_*, answers, ranking: optional on import. answers (rank sets only): JSON list of
# {text, version, end}; ranking: JSON tiers of answer indices, best first (rank votes).
ARENA_VALUES = {"0": 0, "1": 1, "": 0, "false": 0, "true": 1}
_MAX_ID_DIGITS = 18  # ids and times must fit SQLite's 64-bit integers


PAIR_FIELDS = ("prompt", "response_a", "response_b", "version_a", "version_b", "arena",
               "end_a", "end_b", "answers")


def _end_cell(end: str | None) -> str:
    """How an answer ended, in a CSV cell: empty if unknown, else a JSON string, so that
    '' (cut at the token limit) and '\\nQuestion:' survive the round trip."""
    return "" if end is None else json.dumps(end)


def _end_value(cell: str | None, column: str, bad) -> str | None:
    if not cell:
        return None
    try:
        end = json.loads(cell)
    except json.JSONDecodeError:
        end = None
    if not isinstance(end, str):
        raise bad(f"{column} {cell!r}: leave it empty, or write a JSON string such as "
                  '"<eos>" (or "" for an answer cut at the token limit)')
    return end


def _rank_cells(r: dict, bad) -> tuple[str | None, str | None]:
    """(answers, ranking) as stored, checked: a rank set's answers and its vote's tiers,
    or (None, None) for an A/B pair."""
    if not r.get("answers"):
        if r.get("ranking"):
            raise bad("ranking given without answers: a ranking needs the rank set's answers")
        return None, None
    try:
        answers = json.loads(r["answers"])
    except json.JSONDecodeError as e:
        raise bad(f"answers is not JSON ({e})") from None
    if (not isinstance(answers, list) or not MIN_RANK <= len(answers) <= MAX_RANK
            or not all(isinstance(a, dict) and isinstance(a.get("text"), str)
                       and isinstance(a.get("version"), str) and a["version"]
                       and isinstance(a.get("end"), str | None) for a in answers)):
        raise bad(f"answers: expected a JSON list of {MIN_RANK}..{MAX_RANK} objects "
                  "{text, version, end}")
    if r["choice"] not in RANK_CHOICES:
        raise bad(f"choice {r['choice']!r} on a rank set: use one of {', '.join(RANK_CHOICES)}")
    tiers = None
    if r["choice"] == "rank":
        try:
            tiers = check_tiers(json.loads(r.get("ranking") or "null"), len(answers))
        except (json.JSONDecodeError, BadInput) as e:
            raise bad(f"ranking {r.get('ranking')!r}: {e}") from None
    clean = [{"text": a["text"], "version": a["version"], "end": a.get("end"), "ids": None,
              "reward": None} for a in answers]
    return (json.dumps(clean, ensure_ascii=False),
            None if tiers is None else json.dumps(tiers))


def _vote_row(name: str, n: int, r: dict, max_chars: int) -> dict:
    """One checked votes-CSV row with typed values."""
    def bad(problem: str) -> ImportFailed:
        return ImportFailed(name, n, problem)

    answers, ranking = _rank_cells(r, bad)
    if answers is None and r["choice"] not in CHOICES:
        raise bad(f"choice {r['choice']!r} is not one of {', '.join(CHOICES)}")
    for k in ("annotator", "response_a", "response_b", "version_a", "version_b"):
        if not r[k].strip():
            raise bad(f"empty {k}")
    for k in ("pair_id", "decide_ms"):
        if r.get(k) and not (r[k].isascii() and r[k].isdigit()
                             and len(r[k]) <= _MAX_ID_DIGITS):
            raise bad(f"{k} {r[k]!r} is not a whole number of at most {_MAX_ID_DIGITS} digits")
    if r["arena"].strip().lower() not in ARENA_VALUES:
        raise bad(f"arena {r['arena']!r}: use 0 or 1")
    if len(r.get("better_answer") or "") > MAX_BETTER_ANSWER:
        raise bad(f"better_answer has more than {MAX_BETTER_ANSWER} characters")
    return {**r, "prompt": checked_prompt(name, n, r["prompt"], max_chars),
            "arena": ARENA_VALUES[r["arena"].strip().lower()],
            "pair_id": int(r["pair_id"]) if r.get("pair_id") else None,
            "decide_ms": int(r["decide_ms"]) if r.get("decide_ms") else None,
            "better_answer": (r.get("better_answer") or "").strip() or None,
            "created": r.get("created") or None,
            "end_a": _end_value(r.get("end_a"), "end_a", bad),
            "end_b": _end_value(r.get("end_b"), "end_b", bad),
            "answers": answers, "ranking": ranking}


def parse_votes(name: str, rows: Rows, max_chars: int) -> list[dict]:
    """Check every row; rows of one pair_id must agree on the pair's fields."""
    if not rows:
        raise ImportFailed(name, None, "no votes found")
    parsed, first = [], {}
    for n, r in rows:
        v = _vote_row(name, n, r, max_chars)
        key = v["pair_id"] if v["pair_id"] is not None else f"line{n}"
        seen = first.setdefault(key, (n, v))
        diff = [f for f in PAIR_FIELDS if seen[1][f] != v[f]]
        if diff:
            raise ImportFailed(name, n, f"pair {key} has a different {diff[0]} than on line "
                                        f"{seen[0]}")
        parsed.append({**v, "key": key})
    return parsed


def import_votes(store, rows: list[dict]) -> dict:
    """Votes CSV -> pairs + votes. Pair ids are kept when every row has one and none of
    them exists yet (a fresh DB round-trips exactly); otherwise every pair gets a new id."""
    keys = list(dict.fromkeys(r["key"] for r in rows))  # a pair id, or its line if none
    pairs: dict = {}
    with store.write() as db:
        taken = not ids_free(db, keys)
        for r in rows:
            if r["key"] not in pairs:
                keep = r["key"] if not taken else None
                pairs[r["key"]] = insert_pair(
                    db, keep, prompt_id(db, r["prompt"]), r["response_a"], r["response_b"],
                    r["version_a"], r["version_b"], r["arena"], r["end_a"], r["end_b"],
                    r["answers"])
            t = now()
            db.execute("insert into votes (pair_id, annotator, choice, better_answer, decide_ms,"
                       " created, updated, ranking) values (?,?,?,?,?,?,?,?) on conflict "
                       "(pair_id, annotator) do update set choice = excluded.choice, "
                       "better_answer = excluded.better_answer, decide_ms = "
                       "excluded.decide_ms, ranking = excluded.ranking",
                       [pairs[r["key"]], r["annotator"], r["choice"], r["better_answer"],
                        r["decide_ms"], r["created"] or t, t, r["ranking"]])
        failpoint("import.before_commit")
    return {"format": "votes", "pairs": len(pairs), "votes": len(rows)}


def vote_rows(store) -> list[dict]:
    rows = store.query(
        "select v.pair_id, pr.text as prompt, p.response_a, p.response_b, p.version_a, "
        "p.version_b, p.arena, v.annotator, v.choice, v.better_answer, v.decide_ms, "
        "v.created, p.end_a, p.end_b, p.answers, v.ranking from votes v join pairs p on "
        "p.id = v.pair_id join prompts pr on pr.id = p.prompt_id order by v.pair_id, v.id")
    return [{**r, "end_a": _end_cell(r["end_a"]), "end_b": _end_cell(r["end_b"]),
             "answers": _answers_cell(r["answers"])} for r in rows]


def _answers_cell(answers: str | None) -> str | None:
    """A rank set's answers for the CSV: text, version and end of each (no token ids)."""
    if answers is None:
        return None
    return json.dumps([{k: a.get(k) for k in ("text", "version", "end")}
                       for a in json.loads(answers)], ensure_ascii=False)


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=VOTE_COLUMNS, lineterminator="\r\n")  # quotes \r too
    w.writeheader()
    w.writerows({k: ("" if r[k] is None else r[k]) for k in VOTE_COLUMNS} for r in rows)
    return buf.getvalue()
