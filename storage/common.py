"""Small helpers shared by the storage modules: timestamps and JSON columns.

Timestamps are ISO-8601 UTC strings with milliseconds (``2025-01-31T12:00:00.000+00:00``),
so they sort correctly as text and compare with ``<`` in SQL.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from storage.errors import BadInput

PAIR_STATUSES = ("queued", "served", "voted", "expired")
CHOICES = ("a", "b", "tie", "both_bad")
MAX_PROMPT_CHARS = 4000  # the default longest prompt (AppConfig.max_prompt_chars sets it)
ADAPTER_STATUSES = ("saved", "ready", "rejected", "failed")  # saved: on disk, not yet serving
ROUND_STATUSES = ("running", "accepted", "rejected", "failed")


def now(offset_s: float = 0.0) -> str:
    """The UTC time ``offset_s`` seconds from now, ISO-8601 with milliseconds."""
    t = datetime.now(timezone.utc).timestamp() + offset_s
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def today() -> str:
    """Today's UTC date, ``YYYY-MM-DD`` (a prefix of every timestamp made today)."""
    return datetime.now(timezone.utc).date().isoformat()


def dumps(value: Any, what: str = "value") -> str | None:
    """JSON text of ``value`` (keys sorted, so equal values store equal text); None stays
    NULL. Raises BadInput naming ``what`` when the value is not JSON-serialisable."""
    if value is None:
        return None
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise BadInput(f"{what} cannot be stored as JSON ({e}): use plain numbers, strings, "
                       "lists and dicts") from None


def loads(text: str | None) -> Any:
    """The value of a JSON column (None for NULL)."""
    return None if text is None else json.loads(text)


def require_one_of(value: Any, allowed: tuple[str, ...], what: str) -> None:
    """Raise BadInput unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise BadInput(f"{what} {value!r} is not valid: use one of {', '.join(allowed)}")


_VERSION = re.compile(r"v([0-9]+)")


def is_version(label: object) -> bool:
    """True for an adapter version label: 'v' and ASCII digits ('v1', 'v12')."""
    return isinstance(label, str) and _VERSION.fullmatch(label) is not None


def version_number(version: object) -> int:
    """3 for 'v3'; 0 for 'base', 'import' or anything else (for sorting versions)."""
    m = _VERSION.fullmatch(str(version))
    return int(m.group(1)) if m else 0


def ids_json(ids: Sequence[int] | None, what: str) -> str | None:
    """Token ids as a compact JSON list for a column (None stays NULL); BadInput unless
    every id is a non-negative int."""
    if ids is None:
        return None
    if isinstance(ids, str | bytes) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise BadInput(f"{what} must be a list of token ids (non-negative integers)")
    return json.dumps(list(ids), separators=(",", ":"))


def ids_of(text: str | None) -> tuple[int, ...] | None:
    """The token ids stored by ``ids_json`` (None for NULL)."""
    return None if text is None else tuple(json.loads(text))


def majority(choices: list[str]) -> tuple[str | None, float]:
    """(majority choice or None on an even split at the top, share choosing it)."""
    counts = Counter(choices).most_common()
    share = counts[0][1] / len(choices)
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None, share
    return counts[0][0], share


# Which pairs go to two annotators (``take_pair``'s overlap_fraction): a fixed hash of the
# pair id in 0..OVERLAP_BUCKETS-1, below fraction * OVERLAP_BUCKETS. ``is_overlap_pair`` is
# the same rule in Python.
OVERLAP_BUCKETS = 10007
OVERLAP_PICK_SQL = f"((pairs.id * 2654435761) % {OVERLAP_BUCKETS})"


def is_overlap_pair(pair_id: int, fraction: float) -> bool:
    return (pair_id * 2654435761) % OVERLAP_BUCKETS < fraction * OVERLAP_BUCKETS
