"""Votes and how they become training data.

Mapping (documented in the README):
  - A/B majority -> one (prompt, chosen, rejected) example; ``agreement`` is the share of
    the pair's annotators who agree with the majority;
  - tie majority -> no pairwise example (for KTO: both responses desirable);
  - both_bad -> no pairwise example (for KTO: both undesirable);
  - a written better answer -> chosen over BOTH responses (and desirable for KTO).
A pair whose votes split evenly between A and B gives no pairwise example.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

from storage.errors import BadChoice, BadInput

CHOICES = ("a", "b", "tie", "both_bad")
MAX_BETTER_ANSWER = 20_000
MAX_ANNOTATOR = 64


class VotesMixin:
    def record_vote(self, pair_id: int, annotator: str, choice: str,
                    better_answer: str | None = None, decide_ms: int | None = None) -> int:
        """Store a vote (a repeat by the same annotator updates it). Returns the vote id.

        Nothing is stored when any argument is bad.
        """
        from storage.db import now

        if choice not in CHOICES:
            raise BadChoice(f"choice {choice!r} is not valid: use one of {', '.join(CHOICES)}")
        if not isinstance(annotator, str) or not annotator.strip():
            raise BadInput("annotator name is empty: log in, or pass a name")
        if len(annotator) > MAX_ANNOTATOR:
            raise BadInput(f"annotator name has {len(annotator)} characters (max "
                           f"{MAX_ANNOTATOR})")
        if better_answer is not None:
            if not isinstance(better_answer, str):
                raise BadInput("better_answer must be text")
            better_answer = better_answer.strip() or None
            if better_answer and len(better_answer) > MAX_BETTER_ANSWER:
                raise BadInput(f"better answer has {len(better_answer)} characters; the limit "
                               f"is {MAX_BETTER_ANSWER}")
        if decide_ms is not None and (not isinstance(decide_ms, int) or decide_ms < 0):
            raise BadInput(f"decide_ms={decide_ms!r}: must be a non-negative integer (ms)")
        try:
            pair_id = int(pair_id)
        except (TypeError, ValueError):
            raise BadInput(f"pair id {pair_id!r} is not a number") from None
        self.get_pair(pair_id)  # UnknownPair with a clear message
        t = now()
        with self.write() as db:
            db.execute(
                "insert into votes (pair_id, annotator, choice, better_answer, decide_ms, "
                "created, updated) values (?,?,?,?,?,?,?) on conflict (pair_id, annotator) do "
                "update set choice = excluded.choice, better_answer = excluded.better_answer, "
                "decide_ms = excluded.decide_ms, updated = excluded.updated",
                [pair_id, annotator, choice, better_answer, decide_ms, t, t])
            db.execute("insert or ignore into pair_assignments (pair_id, annotator, "
                       "assigned_at) values (?, ?, ?)", [pair_id, annotator, t])
            db.execute("update pairs set status = 'voted' where id = ?", [pair_id])
            return db.execute("select id from votes where pair_id = ? and annotator = ?",
                              [pair_id, annotator]).fetchone()[0]

    def votes_count(self) -> int:
        return self.one("select count(*) as n from votes")["n"]

    def last_vote_id(self) -> int:
        return self.one("select coalesce(max(id), 0) as n from votes")["n"]

    def usable_votes_since(self, vote_id: int) -> int:
        """Votes after ``vote_id`` that yield training data: a, b, both_bad, or any with a
        better answer. Ties count too (they feed KTO) — every vote is a signal."""
        return self.one("select count(*) as n from votes where id > ?", [vote_id])["n"]

    def _voted_pairs(self, max_vote_id: int | None) -> dict[int, dict]:
        cap = "" if max_vote_id is None else "and v.id <= ?"
        rows = self.query(
            "select v.pair_id, v.annotator, v.choice, v.better_answer, v.id as vote_id, "
            "p.response_a, p.response_b, pr.text as prompt from votes v join pairs p on "
            f"p.id = v.pair_id join prompts pr on pr.id = p.prompt_id where 1 {cap} "
            "order by v.pair_id, v.id", [] if max_vote_id is None else [max_vote_id])
        pairs: dict[int, dict] = {}
        for r in rows:
            p = pairs.setdefault(r["pair_id"], {"prompt": r["prompt"], "a": r["response_a"],
                                                "b": r["response_b"], "votes": []})
            p["votes"].append(r)
        return pairs

    @staticmethod
    def _majority(votes: list[dict]) -> tuple[str | None, float]:
        counts = Counter(v["choice"] for v in votes).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            return None, counts[0][1] / len(votes)  # an even split has no majority
        return counts[0][0], counts[0][1] / len(votes)

    def training_pairs(self, max_vote_id: int | None = None, window: int = 0) -> list[dict]:
        """(prompt, chosen, rejected) examples from the votes (see module docstring)."""
        pairs = self._voted_pairs(max_vote_id)
        ids = sorted(pairs)[-window:] if window else sorted(pairs)
        out = []
        for pid in ids:
            p = pairs[pid]
            choice, agreement = self._majority(p["votes"])
            base = {"pair_id": pid, "prompt": p["prompt"], "agreement": agreement,
                    "n_votes": len(p["votes"])}
            if choice in ("a", "b"):
                loser = "b" if choice == "a" else "a"
                out.append({**base, "key": f"{pid}:{choice}", "chosen": p[choice],
                            "rejected": p[loser]})
            for v in p["votes"]:
                if v["better_answer"]:
                    for side in ("a", "b"):
                        out.append({**base, "key": f"{pid}:better:{v['annotator']}:{side}",
                                    "chosen": v["better_answer"], "rejected": p[side]})
        return out

    def kto_rows(self, max_vote_id: int | None = None) -> list[dict]:
        """Unpaired (prompt, completion, desirable) rows for KTO, plus imported labels."""
        out = []
        for pid, p in sorted(self._voted_pairs(max_vote_id).items()):
            choice, _ = self._majority(p["votes"])
            labels = {"a": {"a": True, "b": False}, "b": {"a": False, "b": True},
                      "tie": {"a": True, "b": True},
                      "both_bad": {"a": False, "b": False}}.get(choice, {})
            for side, good in labels.items():
                out.append({"pair_id": pid, "prompt": p["prompt"], "completion": p[side],
                            "label": good})
            for v in p["votes"]:
                if v["better_answer"]:
                    out.append({"pair_id": pid, "prompt": p["prompt"],
                                "completion": v["better_answer"], "label": True})
        for r in self.query("select l.completion, l.label, pr.text as prompt from labels l "
                            "join prompts pr on pr.id = l.prompt_id order by l.id"):
            out.append({"pair_id": None, "prompt": r["prompt"], "completion": r["completion"],
                        "label": bool(r["label"])})
        return out

    def add_annotator(self, name: str, role: str = "annotator") -> None:
        from storage.db import now

        if role not in ("annotator", "admin"):
            raise BadInput(f"role {role!r}: use annotator or admin")
        with self.write() as db:
            db.execute("insert into annotators (name, role, created) values (?, ?, ?) on "
                       "conflict (name) do update set role = excluded.role", [name, role, now()])

    def annotator_role(self, name: str) -> str | None:
        row = self.one("select role from annotators where name = ?", [name])
        return row["role"] if row else None

    def list_annotators(self) -> list[dict]:
        return self.query("select * from annotators order by name")

    def annotator_progress(self, name: str) -> dict:
        """Votes today / in total, and agreement: on pairs other annotators voted on too,
        the mean share of them who made the same choice (None without overlap)."""
        today = datetime.now(timezone.utc).date().isoformat()
        mine = self.query("select pair_id, choice, created from votes where annotator = ?",
                          [name])
        shares = []
        for v in mine:
            others = self.query("select choice from votes where pair_id = ? and annotator != ?",
                                [v["pair_id"], name])
            if others:
                shares.append(sum(o["choice"] == v["choice"] for o in others) / len(others))
        return {"votes_today": sum(v["created"].startswith(today) for v in mine),
                "votes_total": len(mine),
                "agreement": sum(shares) / len(shares) if shares else None,
                "overlapping_pairs": len(shares)}

    def recent_votes(self, limit: int = 50) -> list[dict]:
        return self.query(
            "select v.id, v.pair_id, v.annotator, v.choice, v.better_answer, v.decide_ms, "
            "v.created, pr.text as prompt, p.response_a, p.response_b, p.version_a, "
            "p.version_b, p.arena from votes v join pairs p on p.id = v.pair_id join prompts "
            "pr on pr.id = p.prompt_id order by v.id desc limit ?", [limit])

    def arena_results(self) -> list[dict]:
        """Per (version, opponent) in arena pairs: the version's wins/losses/ties."""
        rows = self.query("select p.version_a, p.version_b, v.choice from votes v join pairs p "
                          "on p.id = v.pair_id where p.arena = 1 and p.version_a != p.version_b")
        agg: dict[tuple[str, str], dict] = {}
        for r in rows:
            # the challenger is the non-base side (or the newer version)
            a, b = r["version_a"], r["version_b"]
            me, side = (a, "a") if _newer(a, b) else (b, "b")
            opp = b if side == "a" else a
            s = agg.setdefault((me, opp), {"version": me, "opponent": opp, "wins": 0,
                                           "losses": 0, "ties": 0, "both_bad": 0, "n": 0})
            s["n"] += 1
            if r["choice"] in ("tie", "both_bad"):
                s["ties" if r["choice"] == "tie" else "both_bad"] += 1
            else:
                s["wins" if r["choice"] == side else "losses"] += 1
        return sorted(agg.values(), key=lambda s: (_num(s["version"]), s["opponent"]))


def _num(version: str) -> int:
    return int(version[1:]) if version.startswith("v") and version[1:].isdigit() else 0


def _newer(a: str, b: str) -> bool:
    return _num(a) > _num(b)
