"""TRL's DPO dataset format: the pairs the app trains on, and back.

``export --format dpo`` writes one JSON row per training pair (``Store.training_pairs``):

- a pair sampled with a chat template is *conversational*: ``prompt`` is the message list
  the model was conditioned on (the system prompt it was sampled with included),
  ``chosen`` / ``rejected`` one assistant message each; TRL's DPOTrainer applies the same
  chat template;
- a pair sampled with the plain template is *standard*: ``prompt`` is the text exactly as
  the app framed it (``Question: ...\\nAnswer:``, storage/conversation.py) and each answer
  its scored text (a leading space, the answer, and the end it really had: the next
  ``\\nQuestion:``, EOS, or nothing when it was cut at the token limit);
- an imported or written pair whose template is unknown keeps its stored strings.

Columns TRL ignores describe each row: ``template`` (chat, plain or null), ``pair_id``,
``votes`` and ``agreement`` (share of votes for the row's order), ``annotators`` (each
annotator's verdict on this order: chosen, rejected, tie or both_bad),
``version_chosen`` / ``version_rejected``, ``chosen_end`` / ``rejected_end`` (how each
answer ended: the stop string or token, "" if cut, null if unknown) and
``adjudicated_by`` (the admin who decided a disputed pair's order, or null).

``parse_rows`` reads such rows back (and plain TRL rows without the extra columns):
export -> import into a fresh data dir -> export gives the same file when each pair id
appears once; rows that share a pair id (the pairs one rank vote implies, or a written
better answer next to its pair's vote) come back as separate A/B pairs with new ids.
"""

from __future__ import annotations

import json
from typing import Any

from storage import conversation
from storage.common import loads, majority
from storage.ranking import relation

PLAIN_LEAD, PLAIN_END = " ", "\nQuestion:"  # trainer/model/generate.py frames answers so
VERDICTS = {"a": "chosen", "b": "rejected", "tie": "tie", "both_bad": "both_bad"}
CHOICE_OF = {"chosen": "a", "rejected": "b", "tie": "tie", "both_bad": "both_bad"}
_RELATION = {">": "chosen", "<": "rejected", "=": "tie"}
WRITTEN = "human"  # the version of an answer an annotator wrote


# --- export --------------------------------------------------------------------------------
def _pairs_meta(store, ids: set[int]) -> dict[int, dict]:
    """{pair_id: {gen_config, version_a, version_b, answers, votes}} of the given pairs."""
    out: dict[int, dict] = {}
    for r in store.query("select p.id, p.gen_config, p.version_a, p.version_b, p.answers, "
                         "v.annotator, v.choice, v.better_answer, v.ranking, aj.choice as "
                         "adjudicated, aj.admin from pairs p join votes v on v.pair_id = p.id "
                         "left join adjudications aj on aj.pair_id = p.id order by p.id, v.id"):
        if r["id"] not in ids:
            continue
        m = out.setdefault(r["id"], {"gen_config": loads(r["gen_config"]) or {},
                                     "versions": {"a": r["version_a"], "b": r["version_b"]},
                                     "answers": loads(r["answers"]), "votes": [],
                                     "adjudicated": r["adjudicated"], "admin": r["admin"]})
        m["votes"].append(r)
    return out


def _ab_winner(meta: dict) -> str:
    """The side ('a' or 'b') an A/B row has chosen: an admin's decision, else the votes'
    majority (rows exist only for one of the two)."""
    if meta.get("adjudicated") in ("a", "b"):
        return meta["adjudicated"]
    return majority([v["choice"] for v in meta["votes"]])[0] or "a"


def _verdicts(row: dict, meta: dict) -> dict[str, str]:
    """Each annotator's verdict on this row's order (chosen above rejected)."""
    if row["kind"] == "rank":
        i, j = row["chosen_index"], row["rejected_index"]
        return {v["annotator"]: ("both_bad" if v["choice"] == "both_bad" else
                                 _RELATION[relation(loads(v["ranking"]), i, j)])
                for v in meta["votes"]}
    if row["kind"] == "better":
        return {row["annotator"]: "chosen"}
    swap = {"a": "b", "b": "a"} if _ab_winner(meta) == "b" else {}
    return {v["annotator"]: VERDICTS[swap.get(v["choice"], v["choice"])]
            for v in meta["votes"]}


def _versions(row: dict, meta: dict) -> tuple[str | None, str | None]:
    """(version of the chosen answer, of the rejected); a written answer's is 'human'."""
    if row["kind"] == "rank":
        return (meta["answers"][row["chosen_index"]].get("version"),
                meta["answers"][row["rejected_index"]].get("version"))
    v = meta["versions"]
    if row["kind"] == "better":
        return WRITTEN, v[row["side"]]
    won = _ab_winner(meta)
    return v[won], v["b" if won == "a" else "a"]


def _framed(text: str, end: str | None) -> str:
    return f"{PLAIN_LEAD}{text}{PLAIN_END if end is None else end}"


def dpo_rows(store) -> list[dict[str, Any]]:
    """One TRL row per training pair (module docstring)."""
    rows = store.training_pairs()
    meta = _pairs_meta(store, {r["pair_id"] for r in rows})
    out = []
    for r in rows:
        m = meta[r["pair_id"]]
        gen = m["gen_config"]
        chat = gen.get("chat")
        messages = conversation.messages_of(r["prompt"], gen.get("system_prompt") or "")
        if chat is True:
            prompt: Any = messages
            chosen: Any = [{"role": "assistant", "content": r["chosen"]}]
            rejected: Any = [{"role": "assistant", "content": r["rejected"]}]
        elif chat is False:
            prompt = conversation.plain_text(messages)
            chosen = _framed(r["chosen"], r["chosen_end"])
            rejected = _framed(r["rejected"], r["rejected_end"])
        else:
            prompt, chosen, rejected = r["prompt"], r["chosen"], r["rejected"]
        verdicts = _verdicts(r, m)
        vc, vr = _versions(r, m)
        agree = sum(v == "chosen" for v in verdicts.values()) / max(len(verdicts), 1)
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                    "template": {True: "chat", False: "plain"}.get(chat),
                    "pair_id": r["pair_id"], "votes": len(verdicts),
                    "agreement": round(agree, 4), "annotators": verdicts,
                    "version_chosen": vc, "version_rejected": vr,
                    "chosen_end": r["chosen_end"], "rejected_end": r["rejected_end"],
                    "adjudicated_by": m["admin"] if r["kind"] == "ab" else None})
    return out


# --- import --------------------------------------------------------------------------------
def plain_messages(text: str) -> list[dict[str, str]]:
    """The inverse of ``conversation.plain_text``: the turns of a plain-template prompt.
    ValueError if the text is not in that form."""
    body, system = text, None
    first = text.find("Question: ")
    if first < 0 or not text.endswith("\nAnswer:"):
        raise ValueError("a plain-template prompt starts with 'Question: ' (after an "
                         "optional system paragraph) and ends with '\\nAnswer:'")
    if first > 0:
        if not text[:first].endswith("\n\n"):
            raise ValueError("the system paragraph must end with a blank line")
        system, body = text[:first - 2], text[first:]
    out = [{"role": "system", "content": system}] if system is not None else []
    for chunk in body[len("Question: "):-len("\nAnswer:")].split("\nQuestion: "):
        user, sep, answer = chunk.partition("\nAnswer: ")
        out.append({"role": "user", "content": user})
        if sep:
            out.append({"role": "assistant", "content": answer.rstrip("\n")})
    return out


def unframed(text: str, end: str | None) -> str:
    """A plain-template answer's stored text from its scored text (``_framed``)."""
    tail = PLAIN_END if end is None else end
    if not (text.startswith(PLAIN_LEAD) and text.endswith(tail)):
        raise ValueError(f"a plain-template answer is ' ' + text + its end ({tail!r})")
    return text[len(PLAIN_LEAD):len(text) - len(tail)]


def parse_meta(r: dict) -> dict[str, Any]:
    """The LiveDPO columns of a TRL row (absent ones as None); ValueError if malformed."""
    template = r.get("template")
    if template not in (None, "chat", "plain"):
        raise ValueError(f'"template" must be "chat", "plain" or null, got {template!r}')
    verdicts = r.get("annotators")
    if verdicts is not None and not (isinstance(verdicts, dict) and all(
            isinstance(k, str) and v in CHOICE_OF for k, v in verdicts.items())):
        raise ValueError('"annotators" must map each annotator to chosen, rejected, tie or '
                         "both_bad")
    ends = [r.get(k) for k in ("chosen_end", "rejected_end")]
    if any(e is not None and not isinstance(e, str) for e in ends):
        raise ValueError('"chosen_end" / "rejected_end" must be strings or null')
    pid = r.get("pair_id")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid < 1):
        raise ValueError(f'"pair_id" must be a positive integer, got {pid!r}')
    versions = [r.get(k) for k in ("version_chosen", "version_rejected")]
    if any(v is not None and not isinstance(v, str) for v in versions):
        raise ValueError('"version_chosen" / "version_rejected" must be strings or null')
    admin = r.get("adjudicated_by")
    if admin is not None and (not isinstance(admin, str) or not admin.strip()):
        raise ValueError('"adjudicated_by" must be an admin\'s name or null')
    return {"template": template, "annotators": verdicts, "chosen_end": ends[0],
            "adjudicated_by": admin,
            "rejected_end": ends[1], "pair_id": pid, "version_chosen": versions[0],
            "version_rejected": versions[1]}


def gen_config_of(template: str | None) -> str:
    """The stored gen_config of an imported pair: how it was framed, if known."""
    return json.dumps({} if template is None else {"chat": template == "chat"})
