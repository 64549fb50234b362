"""Checks that tests and benchmarks run against a data dir's SQLite file, after the
server stopped: was every vote a client saw acknowledged stored exactly once, for its
user, unchanged; was any pair handed out twice; which rounds ran in a time window.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


@dataclass
class Seen:
    """What one client saw: the pairs handed to it and the votes acknowledged to it."""

    user: str
    handed: list[int] = field(default_factory=list)  # pair ids next_pair returned
    acked: list[tuple[int, str, str]] = field(default_factory=list)  # (pair, choice, better)


def check_votes(db_path: Path, logs: list[Seen], overlap: int = 1,
                overlap_fraction: float = 0.0) -> dict:
    """Compare what the clients saw acknowledged with the votes table.

    lost: acknowledged but absent for that user; duplicated: a (pair, user) acknowledged
    twice or stored twice; misattributed: lost for its user but stored for another of
    them; changed: stored with another choice or better answer; handed_twice / assigned_twice:
    pairs given (client view / pair_assignments) to more annotators than they may have
    (``overlap``, or 2 for the ``overlap_fraction`` share the store picks: ``is_overlap_pair``),
    or twice to one; unacknowledged_stored: stored although no client saw it acknowledged
    (e.g. a reply that timed out).
    """
    from storage.common import is_overlap_pair

    def allowed(pair_id: int) -> int:
        return max(overlap, 2) if is_overlap_pair(pair_id, overlap_fraction) else overlap

    names = [lg.user for lg in logs]
    marks = ",".join("?" * len(names))
    con = sqlite3.connect(db_path)
    try:
        rows = con.execute("select pair_id, annotator, choice, coalesce(better_answer, '') "
                           f"from votes where annotator in ({marks})", names).fetchall()
        assigned = [p for p, n in con.execute(
            f"select pair_id, count(*) from pair_assignments where annotator in ({marks}) "
            "group by pair_id", names).fetchall() if n > allowed(p)]
    finally:
        con.close()
    stored: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for pair, user, choice, better in rows:
        stored.setdefault((pair, user), []).append((choice, better))
    acked = Counter((p, lg.user) for lg in logs for p, _, _ in lg.acked)
    sent = {(p, lg.user): (c, b) for lg in logs for p, c, b in lg.acked}
    lost = [k for k in acked if k not in stored]
    handed = Counter(p for lg in logs for p in lg.handed)
    per_client = [p for lg in logs for p, n in Counter(lg.handed).items() if n > 1]
    return {
        "acknowledged": sum(acked.values()), "stored": len(rows), "lost": len(lost),
        "duplicated": sum(n - 1 for n in acked.values()) + sum(
            len(v) - 1 for v in stored.values()),
        "misattributed": sum(any((p, o) in stored for o in names if o != u) for p, u in lost),
        "changed": sum(k in stored and sent[k] not in stored[k] for k in acked),
        "handed_twice": len({p for p, n in handed.items() if n > allowed(p)} | set(per_client)),
        "assigned_twice": len(assigned),
        "unacknowledged_stored": sum(k not in acked for k in stored),
        "lost_examples": lost[:5]}


def rounds_during(db_path: Path, start_utc: str, end_utc: str) -> dict:
    """Training rounds that started / finished inside the load window, by status."""
    con = sqlite3.connect(db_path)
    try:
        rows = con.execute("select id, started, finished, status, adapter_version from rounds"
                           ).fetchall()
    finally:
        con.close()
    t0, t1 = datetime.fromisoformat(start_utc), datetime.fromisoformat(end_utc)
    inside = lambda ts: bool(ts) and t0 <= datetime.fromisoformat(ts) <= t1  # noqa: E731
    started = [r for r in rows if inside(r[1])]
    finished = [r for r in rows if inside(r[2])]
    return {"started": len(started), "finished": len(finished),
            "finished_by_status": dict(Counter(r[3] for r in finished)),
            "versions": [r[4] for r in finished if r[4]]}
