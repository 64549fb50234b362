"""Votes, annotators' progress, and how votes become training data.

The vote -> training-data mapping (``training_pairs`` and ``kto_rows``). Per pair, the
majority over its annotators' choices decides; an even split between the top choices
(e.g. one 'a', one 'b') has no majority and gives no example from the A/B choice.
  - A or B majority -> one (prompt, chosen, rejected) example; ``agreement`` is the share
    of the pair's annotators who made the majority choice. KTO: winner desirable, loser
    undesirable.
  - tie majority -> no pairwise example. KTO: both responses desirable (both acceptable).
  - both_bad majority -> no pairwise example. KTO: both responses undesirable.
  - every written better answer (any choice) -> better over A and better over B (skipped
    where the better answer equals that response). KTO: the better answer is desirable.
Imported KTO labels (the ``labels`` table) are appended to ``kto_rows``.
"""

from __future__ import annotations

from typing import Any

from storage.common import (
    CHOICES,
    ids_of,
    majority,
    now,
    require_one_of,
    today,
    version_number,
)
from storage.errors import BadChoice, BadInput, UnknownPair
from storage.ranking import parse_answers

MAX_BETTER_ANSWER = 20_000
MAX_ANNOTATOR = 64
MAX_INT = 2**63 - 1  # SQLite's largest integer
KTO_LABELS = {"a": {"a": True, "b": False}, "b": {"a": False, "b": True},
              "tie": {"a": True, "b": True}, "both_bad": {"a": False, "b": False}}


def check_text(value: str, what: str) -> str:
    """``value`` if it can be stored as UTF-8 (no lone surrogates, e.g. from "\\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{what} contains a lone surrogate (\\ud800-\\udfff): not valid text; "
                       "remove it") from None
    return value


def parse_pair_id(value: object) -> int:
    """A pair id: an int, an integral float or a string of digits (never a bool or 1.7)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return parse_pair_id(int(value))
    if isinstance(value, float) and value.is_integer():
        return parse_pair_id(int(value))
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"pair id {value!r} is not a number: pass a whole number")
    if not 0 <= value <= MAX_INT:
        raise UnknownPair(f"no pair with id {value!r}: ask next_pair for a new one")
    return value


def check_vote(annotator: object, choice: object, better_answer: object,
                decide_ms: object) -> str | None:
    """Validate a vote's fields; returns the cleaned better answer (None if blank)."""
    if choice not in CHOICES:
        raise BadChoice(f"choice {choice!r} is not valid: use one of {', '.join(CHOICES)}")
    if not isinstance(annotator, str) or not check_text(annotator, "annotator name").strip():
        raise BadInput("annotator name is empty: log in, or pass a name")
    if len(annotator) > MAX_ANNOTATOR:
        raise BadInput(f"annotator name {annotator[:20]!r}... has {len(annotator)} "
                       f"characters; use at most {MAX_ANNOTATOR}")
    if decide_ms is not None and (isinstance(decide_ms, bool) or not isinstance(decide_ms, int)
                                  or not 0 <= decide_ms <= MAX_INT):
        raise BadInput(f"decide_ms={decide_ms!r}: must be a non-negative whole number of "
                       "milliseconds, or None")
    if better_answer is None:
        return None
    if not isinstance(better_answer, str):
        raise BadInput(f"better_answer must be text, got {type(better_answer).__name__}")
    better = check_text(better_answer, "better answer").strip()
    if len(better) > MAX_BETTER_ANSWER:
        raise BadInput(f"better answer has {len(better)} characters; the limit is "
                       f"{MAX_BETTER_ANSWER}: shorten it")
    return better or None


class VotesMixin:
    """Vote, annotator and training-data methods of ``storage.db.Store``."""

    def record_vote(self, pair_id: int, annotator: str, choice: str,
                    better_answer: str | None = None, decide_ms: int | None = None) -> int:
        """Store a vote; a repeat by the same annotator on the same pair updates it (same
        id). The pair becomes 'voted'. Returns the vote id. Nothing is stored on error:
        UnknownPair, BadChoice (names the value and the allowed ones) or BadInput."""
        better = check_vote(annotator, choice, better_answer, decide_ms)
        pair_id = parse_pair_id(pair_id)
        with self.write() as db:
            answers = self.get_pair(pair_id).get("answers")  # UnknownPair if missing
            if answers is not None:
                raise BadInput(f"pair {pair_id} is a rank set of {len(answers)} answers: "
                               "vote on it with vote_rank (best and worst)")
            return self._store_vote(db, pair_id, annotator, choice, better, None, decide_ms)

    @staticmethod
    def _store_vote(db, pair_id: int, annotator: str, choice: str, better: str | None,
                    ranking: str | None, decide_ms: int | None) -> int:
        """Insert or replace (same id) one checked vote inside the caller's transaction:
        the annotator holds the pair and the pair becomes 'voted'. Returns the vote id."""
        t = now()
        db.execute(
            "insert into votes (pair_id, annotator, choice, better_answer, ranking, decide_ms, "
            "created, updated) values (?,?,?,?,?,?,?,?) on conflict (pair_id, annotator) do "
            "update set choice = excluded.choice, better_answer = excluded.better_answer, "
            "ranking = excluded.ranking, decide_ms = excluded.decide_ms, "
            "updated = excluded.updated",
            [pair_id, annotator, choice, better, ranking, decide_ms, t, t])
        db.execute("insert or ignore into pair_assignments (pair_id, annotator, "
                   "assigned_at) values (?, ?, ?)", [pair_id, annotator, t])
        db.execute("update pairs set status = 'voted' where id = ?", [pair_id])
        return db.execute("select id from votes where pair_id = ? and annotator = ?",
                          [pair_id, annotator]).fetchone()[0]

    def undo_last_vote(self, annotator: str, trained_through: int,
                       showing: int | None = None) -> int:
        """Delete ``annotator``'s most recent vote, unless a round has read it (its id is
        at most ``trained_through``); it leaves training and exports with it. The pair
        stays assigned to them, to be shown again; the pair they were shown instead
        (``showing``, not voted on) goes back to the queue. Returns the undone pair's id;
        BadInput when there is nothing to undo or it is too late."""
        if not isinstance(annotator, str) or not annotator.strip():
            raise BadInput("annotator name is empty: log in, or pass a name")
        with self.write() as db:
            row = db.execute("select id, pair_id from votes where annotator = ? order by "
                             "updated desc, id desc limit 1", [annotator]).fetchone()
            if row is None:
                raise BadInput("There is no vote of yours to undo.")
            vote_id, pair_id = row
            if vote_id <= trained_through:
                raise BadInput(f"Your last vote (pair {pair_id}) was already used by a "
                               "training round, so it stays: a vote can be undone until "
                               "the next round trains on it.")
            db.execute("delete from votes where id = ?", [vote_id])
            if not db.execute("select 1 from votes where pair_id = ?", [pair_id]).fetchone():
                db.execute("update pairs set status = 'served' where id = ? and status = "
                           "'voted'", [pair_id])
            if showing is not None and showing != pair_id:
                db.execute("delete from pair_assignments where pair_id = ? and annotator = ? "
                           "and not exists (select 1 from votes v where v.pair_id = ? and "
                           "v.annotator = ?)", [showing, annotator, showing, annotator])
                db.execute("update pairs set status = 'queued', served_at = null where id = ? "
                           "and status = 'served' and not exists (select 1 from "
                           "pair_assignments a where a.pair_id = ?)", [showing, showing])
        return pair_id

    def disagreements(self) -> list[dict]:
        """A/B pairs whose annotators disagree and that no admin has decided yet, oldest
        first: {pair_id, prompt, response_a, response_b, votes: [{annotator, choice}]}."""
        rows = self.query(
            "select p.id, pr.text as prompt, p.response_a, p.response_b, v.annotator, "
            "v.choice from pairs p join prompts pr on pr.id = p.prompt_id join votes v on "
            "v.pair_id = p.id where p.answers is null and not exists (select 1 from "
            "adjudications aj where aj.pair_id = p.id) order by p.id, v.id")
        out: dict[int, dict] = {}
        for r in rows:
            item = out.setdefault(r["id"], {"pair_id": r["id"], "prompt": r["prompt"],
                                            "response_a": r["response_a"],
                                            "response_b": r["response_b"], "votes": []})
            item["votes"].append({"annotator": r["annotator"], "choice": r["choice"]})
        return [i for i in out.values()
                if len(i["votes"]) > 1 and len({v["choice"] for v in i["votes"]}) > 1]

    def adjudicate(self, pair_id: Any, choice: str, admin: str) -> None:
        """An admin decides a pair's label (a, b, tie or both_bad): from now on it is the
        pair's label for training and export, whatever its votes say. Deciding again
        replaces the decision. BadInput / BadChoice / UnknownPair name the problem."""
        pair_id = parse_pair_id(pair_id)
        require_one_of(choice, CHOICES, "choice")
        if not isinstance(admin, str) or not admin.strip():
            raise BadInput("admin name is empty: log in as an admin")
        with self.write() as db:
            if self.get_pair(pair_id).get("answers") is not None:
                raise BadInput(f"pair {pair_id} is a rank set: only A/B pairs are adjudicated")
            if not db.execute("select 1 from votes where pair_id = ?", [pair_id]).fetchone():
                raise BadInput(f"pair {pair_id} has no votes: there is nothing to decide")
            db.execute("insert into adjudications (pair_id, choice, admin, created) values "
                       "(?, ?, ?, ?) on conflict (pair_id) do update set choice = "
                       "excluded.choice, admin = excluded.admin, created = excluded.created",
                       [pair_id, choice, admin, now()])

    def agreement(self) -> dict:
        """Agreement between annotators on A/B pairs judged more than once, per annotator,
        per pair of annotators and for the team (storage/agreement.py)."""
        from storage.agreement import summary

        votes = self.query("select v.pair_id, v.annotator, v.choice, v.decide_ms from votes v "
                           "join pairs p on p.id = v.pair_id where p.answers is null")
        skips = {r["annotator"]: r["n"] for r in self.query(
            "select annotator, count(*) as n from skips group by annotator")}
        return summary(votes, skips)

    def recent_voted_prompts(self, limit: int, max_vote_id: int | None = None) -> list[str]:
        """The texts of the prompts voted on most recently (up to ``max_vote_id``), newest
        first, each once: every vote counts here, ties and both-bad included."""
        cap = "" if max_vote_id is None else "where v.id <= ?"
        rows = self.query(
            "select pr.text, max(v.id) as last from votes v join pairs p on p.id = v.pair_id "
            f"join prompts pr on pr.id = p.prompt_id {cap} group by pr.id order by last desc "
            "limit ?", [*([] if max_vote_id is None else [max_vote_id]), limit])
        return [r["text"] for r in rows]

    def votes_count(self) -> int:
        """How many votes are stored (a changed vote counts once)."""
        return self.one("select count(*) as n from votes")["n"]

    def last_vote_id(self) -> int:
        """The highest vote id (0 without votes): a round's data cut-off."""
        return self.one("select coalesce(max(id), 0) as n from votes")["n"]

    def usable_votes_since(self, vote_id: int) -> int:
        """Votes with id > ``vote_id`` that yield training data: a, b, both_bad, or any with
        a better answer. Ties count too: they give no DPO pair but feed KTO (both
        desirable), so in practice every new vote counts. A changed vote keeps its id."""
        return self.one("select count(*) as n from votes where id > ?", [vote_id])["n"]

    def _voted_pairs(self, max_vote_id: int | None) -> dict[int, dict]:
        """{pair_id: {prompt, a, b, last (newest vote id), votes: [...]}} up to a cut-off."""
        cap = "" if max_vote_id is None else "and v.id <= ?"
        rows = self.query(
            "select v.pair_id, v.annotator, v.choice, v.better_answer, v.ranking, "
            "v.id as vote_id, p.response_a, p.response_b, p.end_a, p.end_b, p.prompt_ids, "
            "p.ids_a, p.ids_b, p.answers, pr.text as prompt, aj.choice as adjudicated "
            "from votes v join pairs p on p.id = v.pair_id join prompts pr on "
            f"pr.id = p.prompt_id left join adjudications aj on aj.pair_id = p.id where 1 {cap} "
            "order by v.pair_id, v.id", [] if max_vote_id is None else [max_vote_id])
        pairs: dict[int, dict] = {}
        for r in rows:
            p = pairs.setdefault(r["pair_id"], {
                "prompt": r["prompt"], "a": r["response_a"], "b": r["response_b"],
                "end": {"a": r["end_a"], "b": r["end_b"]},
                "ids": {"a": ids_of(r["ids_a"]), "b": ids_of(r["ids_b"])},
                "prompt_ids": ids_of(r["prompt_ids"]), "answers": parse_answers(r["answers"]),
                "adjudicated": r["adjudicated"], "votes": []})
            p["votes"].append(r)
            p["last"] = r["vote_id"]
        return pairs

    @staticmethod
    def pair_label(p: dict, disagreement: str = "majority") -> tuple[str | None, float]:
        """(the label an A/B pair's votes give it, the share of votes for it): an admin's
        adjudication when there is one, else the majority; with ``disagreement='drop'``
        an undecided pair whose annotators disagree has none."""
        choices = [v["choice"] for v in p["votes"]]
        if p.get("adjudicated"):
            return p["adjudicated"], sum(c == p["adjudicated"] for c in choices) / len(choices)
        choice, agreement = majority(choices)
        if disagreement == "drop" and len(set(choices)) > 1:
            return None, agreement
        return choice, agreement

    def _pair_examples(self, pid: int, p: dict, disagreement: str = "majority") -> list[dict]:
        """The DPO rows of one voted pair (see the module docstring) or rank set."""
        if p["answers"] is not None:
            return self._rank_examples(pid, p)
        choice, agreement = self.pair_label(p, disagreement)
        base = {"pair_id": pid, "prompt": p["prompt"], "prompt_ids": p["prompt_ids"],
                "agreement": agreement, "n_votes": len(p["votes"])}
        out = []
        if choice in ("a", "b"):
            loser = "b" if choice == "a" else "a"
            out.append({**base, "key": f"{pid}:ab", "kind": "ab", "chosen": p[choice],
                        "rejected": p[loser], "chosen_end": p["end"][choice],
                        "rejected_end": p["end"][loser], "chosen_ids": p["ids"][choice],
                        "rejected_ids": p["ids"][loser]})
        for v in p["votes"]:
            for side in ("a", "b") if v["better_answer"] else ():
                if v["better_answer"] != p[side]:
                    out.append({**base, "key": f"{pid}:better:{v['annotator']}:{side}",
                                "kind": "better", "annotator": v["annotator"],
                                "side": side, "chosen": v["better_answer"],
                                "rejected": p[side], "chosen_end": None,
                                "rejected_end": p["end"][side], "chosen_ids": None,
                                "rejected_ids": p["ids"][side]})
        return out

    def training_pairs(self, max_vote_id: int | None = None,
                       disagreement: str = "majority") -> list[dict]:
        """DPO rows {key, kind, pair_id, prompt, chosen, rejected, chosen_end, rejected_end,
        prompt_ids, chosen_ids, rejected_ids (sampled token ids or None), agreement,
        n_votes; rank rows add chosen_index / rejected_index into the set, written-answer
        rows annotator and side} from votes with id <= ``max_vote_id``, in pair order (rounds keep the
        latest ``--window`` of them). ``key`` is stable per row (held-out splits). An A/B
        pair's label is an admin's adjudication if any, else its majority; with
        ``disagreement='drop'`` (rounds, by default) an undecided pair whose annotators
        disagree gives no row (``pair_label``)."""
        pairs = self._voted_pairs(max_vote_id)
        return [row for pid in sorted(pairs)
                for row in self._pair_examples(pid, pairs[pid], disagreement)]

    def kto_rows(self, max_vote_id: int | None = None) -> list[dict]:
        """Unpaired rows {pair_id, prompt, completion, label} for KTO: the voted pairs
        (see the module docstring), then the imported labels (pair_id None)."""
        out = []
        for pid, p in sorted(self._voted_pairs(max_vote_id).items()):
            if p["answers"] is not None:
                out += self._rank_kto_rows(pid, p)
                continue
            choice, _ = self.pair_label(p)
            for side, good in KTO_LABELS.get(choice, {}).items():
                out.append({"pair_id": pid, "prompt": p["prompt"], "completion": p[side],
                            "label": good, "end": p["end"][side],
                            "prompt_ids": p["prompt_ids"], "ids": p["ids"][side]})
            for v in p["votes"]:
                if v["better_answer"]:
                    out.append({"pair_id": pid, "prompt": p["prompt"],
                                "completion": v["better_answer"], "label": True,
                                "end": None, "prompt_ids": p["prompt_ids"], "ids": None})
        for r in self.query("select l.completion, l.label, pr.text as prompt from labels l "
                            "join prompts pr on pr.id = l.prompt_id order by l.id"):
            out.append({"pair_id": None, "prompt": r["prompt"], "completion": r["completion"],
                        "label": bool(r["label"])})
        return out

    def annotator_progress(self, name: str) -> dict:
        """{votes_today (UTC day), votes_total, agreement, agreement_n}. agreement: on
        pairs others voted on too and whose other voters have a majority, the share where
        this annotator matched it (None when there is no such pair)."""
        mine = self.one("select count(*) as total, coalesce(sum(created >= ?), 0) as today "
                        "from votes where annotator = ?", [today(), name])
        rows = self.query("select v.pair_id, coalesce(v.ranking, v.choice) as mine, "
                          "coalesce(o.ranking, o.choice) as other from votes v join votes o "
                          "on o.pair_id = v.pair_id and o.annotator != v.annotator where "
                          "v.annotator = ? order by v.pair_id", [name])
        others: dict[int, tuple[str, list[str]]] = {}
        for r in rows:
            others.setdefault(r["pair_id"], (r["mine"], []))[1].append(r["other"])
        matched = [m == top for m, votes in others.values()
                   if (top := majority(votes)[0]) is not None]
        return {"votes_today": mine["today"], "votes_total": mine["total"],
                "agreement": sum(matched) / len(matched) if matched else None,
                "agreement_n": len(matched)}

    def recent_votes(self, limit: int = 50) -> list[dict]:
        """The newest votes joined with their prompt, responses and versions."""
        return self.query(
            "select v.id, v.pair_id, v.annotator, v.choice, v.ranking, v.better_answer, "
            "v.decide_ms, "
            "v.created, pr.text as prompt, p.response_a, p.response_b, p.version_a, "
            "p.version_b, p.arena from votes v join pairs p on p.id = v.pair_id join prompts "
            "pr on pr.id = p.prompt_id order by v.id desc limit ?", [limit])

    def arena_results(self) -> list[dict]:
        """Human win-rate of each adapter version in arena pairs, per opponent:
        {version, opponent, wins, losses, ties, both_bad, n}. The version is the newer side
        (an adapter against base, or against the previous version). Arena rank sets add
        their cross-version comparisons (``rank_arena_results``)."""
        rows = self.query("select p.version_a, p.version_b, v.choice from votes v join pairs p "
                          "on p.id = v.pair_id where p.arena = 1 and p.version_a != p.version_b "
                          "and p.answers is null")
        agg: dict[tuple[str, str], dict] = {}
        for r in rows:
            a, b = r["version_a"], r["version_b"]
            me, side, opp = (a, "a", b) if version_number(a) > version_number(b) else (b, "b", a)
            s = agg.setdefault((me, opp), {"version": me, "opponent": opp, "wins": 0,
                                           "losses": 0, "ties": 0, "both_bad": 0, "n": 0})
            s["n"] += 1
            if r["choice"] == "tie":
                s["ties"] += 1
            elif r["choice"] == "both_bad":
                s["both_bad"] += 1
            else:
                s["wins" if r["choice"] == side else "losses"] += 1
        for r in self.rank_arena_results():
            s = agg.setdefault((r["version"], r["opponent"]), dict.fromkeys(
                ("wins", "losses", "ties", "both_bad", "n"), 0) | {
                "version": r["version"], "opponent": r["opponent"]})
            for k in ("wins", "losses", "ties", "both_bad", "n"):
                s[k] += r[k]
        return sorted(agg.values(), key=lambda s: (version_number(s["version"]), s["opponent"]))
