"""Rank-of-N sets in the store: N answers to one prompt, and votes that rank them.

A rank set is a row of ``pairs`` whose ``answers`` column holds every answer (JSON list
of {text, version, end, ids, reward}); ``response_a`` / ``response_b`` repeat the first
two so every reader of pairs keeps working. Sets and pairs share assignments, skips,
statuses and retiring; ``take_pair(kind=...)`` hands out one kind. A rank vote stores
``choice`` 'rank' and ``ranking`` (tiers of answer indices, best first), or 'tie' /
'both_bad' with no ranking (storage/ranking.py says what each implies).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from storage.common import (
    ids_json,
    loads,
    version_number,
)
from storage.errors import BadChoice, BadInput
from storage.ranking import (
    MAX_RANK,
    MIN_RANK,
    RANK_CHOICES,
    Tiers,
    answer_labels,
    implied_pairs,
    relation,
    tiers_of,
)
from storage.votes import check_vote, parse_pair_id

ANSWER_KEYS = ("text", "version", "end", "ids", "reward")


def _clean_answers(answers: Sequence[dict]) -> list[dict]:
    """The answers as stored, checked: MIN_RANK..MAX_RANK of them, each with text and a
    version label."""
    if not MIN_RANK <= len(answers) <= MAX_RANK:
        raise BadInput(f"a rank set has {MIN_RANK}..{MAX_RANK} answers, got {len(answers)}")
    out = []
    for k, a in enumerate(answers):
        if not isinstance(a.get("text"), str) or not a.get("version"):
            raise BadInput(f"answer #{k + 1} needs its text and the version that wrote it")
        ids = a.get("ids")
        ids_json(ids, f"answer #{k + 1} ids")  # checks the ids
        out.append({"text": a["text"], "version": a["version"], "end": a.get("end"),
                    "ids": None if ids is None else list(ids), "reward": a.get("reward")})
    return out


class RanksMixin:
    """Rank-set and rank-vote methods of ``storage.db.Store``."""

    def record_rank_set(self, prompt_id: int, answers: Sequence[dict], gen_config: dict,
                        seed: int, arena: bool = False, status: str = "queued",
                        prompt_ids: Sequence[int] | None = None) -> int:
        """Store N freshly sampled answers to one prompt as a rank set; returns its id.
        Each answer is {text, version, end, ids, reward} (see ``record_pair`` for end and
        ids). The versions of the set show in version_a / version_b (retiring, arena)."""
        clean = _clean_answers(answers)
        versions = list(dict.fromkeys(a["version"] for a in clean))
        first, second = clean[0], clean[1]
        return self.record_pair(
            prompt_id, first["text"], second["text"], versions[0], versions[-1], gen_config,
            seed, arena=arena, status=status, end_a=first["end"], end_b=second["end"],
            prompt_ids=prompt_ids, ids_a=first["ids"], ids_b=second["ids"],
            answers=json.dumps(clean, ensure_ascii=False))

    def record_rank_vote(self, pair_id: int, annotator: str, choice: str = "rank",
                         best: int | None = None, worst: int | None = None,
                         decide_ms: int | None = None) -> int:
        """Store a rank vote on a rank set: choice 'rank' with the best and/or the worst
        answer (0-based indices), or 'tie' / 'both_bad' without them. A repeat by the same
        annotator replaces it (same id). Nothing is stored on error."""
        if choice not in RANK_CHOICES:
            raise BadChoice(f"choice {choice!r} is not valid for a rank set: use one of "
                            f"{', '.join(RANK_CHOICES)}")
        check_vote(annotator, "tie", None, decide_ms)
        pair_id = parse_pair_id(pair_id)
        with self.write() as db:
            answers = self.get_pair(pair_id).get("answers")
            if answers is None:
                raise BadInput(f"pair {pair_id} is an A/B pair, not a rank set: vote on it "
                               "with choice a, b, tie or both_bad")
            tiers = None
            if choice == "rank":
                tiers = tiers_of(best, worst, len(answers))
            elif best is not None or worst is not None:
                raise BadInput(f"a {choice!r} vote ranks nothing: leave best and worst empty")
            return self._store_vote(db, pair_id, annotator, choice, None,
                                    None if tiers is None else json.dumps(tiers), decide_ms)

    @staticmethod
    def _rank_examples(pid: int, p: dict) -> list[dict]:
        """The DPO rows one voted rank set implies (storage/ranking.py), extreme first."""
        answers = p["answers"]
        rankings = [loads(v["ranking"]) for v in p["votes"]]
        base = {"pair_id": pid, "prompt": p["prompt"], "prompt_ids": p["prompt_ids"],
                "n_votes": len(p["votes"]), "kind": "rank", "group": f"{pid}:rank"}
        out = []
        for row in implied_pairs(rankings, len(answers)):
            c, r = answers[row["chosen"]], answers[row["rejected"]]
            out.append({**base, "key": f"{pid}:rank:{row['chosen']}>{row['rejected']}",
                        "agreement": row["agreement"], "extreme": row["extreme"],
                        "chosen_index": row["chosen"], "rejected_index": row["rejected"],
                        "chosen": c["text"], "rejected": r["text"], "chosen_end": c["end"],
                        "rejected_end": r["end"], "chosen_ids": c["ids"],
                        "rejected_ids": r["ids"]})
        return out

    @staticmethod
    def _rank_kto_rows(pid: int, p: dict) -> list[dict]:
        """KTO rows of one voted rank set: best desirable, worst undesirable."""
        answers = p["answers"]
        labels = answer_labels([(v["choice"], loads(v["ranking"])) for v in p["votes"]],
                               len(answers))
        return [{"pair_id": pid, "prompt": p["prompt"], "completion": a["text"],
                 "label": good, "end": a["end"], "prompt_ids": p["prompt_ids"],
                 "ids": a["ids"]} for a, good in zip(answers, labels) if good is not None]

    def rank_arena_results(self) -> list[dict]:
        """Arena rank sets (answers from two versions): every cross-version comparison a
        ranking implies counts as a win or loss of the newer version, one tier apart or
        more; same-tier cross-version answers count as ties. Rows as ``arena_results``."""
        rows = self.query("select p.answers, v.choice, v.ranking from votes v join pairs p "
                          "on p.id = v.pair_id where p.arena = 1 and p.answers is not null")
        agg: dict[tuple[str, str], dict] = {}
        for r in rows:
            answers = loads(r["answers"])
            tiers: Tiers | None = loads(r["ranking"])
            versions = [a["version"] for a in answers]
            for i in range(len(answers)):
                for j in range(len(answers)):
                    vi, vj = versions[i], versions[j]
                    if vi == vj or version_number(vi) <= version_number(vj):
                        continue  # each cross pair once, from the newer version's side
                    s = agg.setdefault((vi, vj), {"version": vi, "opponent": vj, "wins": 0,
                                                  "losses": 0, "ties": 0, "both_bad": 0, "n": 0})
                    s["n"] += 1
                    rel = relation(tiers, i, j)
                    key = ("both_bad" if r["choice"] == "both_bad" else "ties" if rel == "="
                           else "wins" if rel == ">" else "losses")
                    s[key] += 1
        return list(agg.values())
