"""Property tests (hypothesis) of the vote path and the import parsers with arbitrary
input: each call either succeeds and stores exactly what it should, or raises the one
user-facing error type of its layer (gr.Error in the UI handler, StoreError in the store,
ImportFailed in the importers) with the database left exactly as it was. Any other
exception, or a partial write, fails. Deterministic and bounded (derandomize=True)."""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path

import gradio as gr
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from app.api import Handlers
from app.config import AppConfig
from storage.db import Store
from storage.errors import ImportFailed, StoreError
from storage.io import VOTE_COLUMNS, export, import_prefs, import_prompts
from tests.hostile_fixtures import db_snapshot, store_service

CHOICES = ("a", "b", "tie", "both_bad")
MAX_BETTER = 20_000
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
# Text with the characters that trip parsers and displays; a third of texts may also
# hold lone surrogates (what a JSON "\\ud800" escape or a broken client produces).
TRICKY = "\n\r\t\x00\x0b\x0c\x1c\x85\u2028\u2029\u202e\ufeff\"',<>&\\$`*#[]{}"
PLAIN = st.text(st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(TRICKY)),
                max_size=30)
TEXT = st.one_of(PLAIN, PLAIN, st.text(st.one_of(st.characters(), st.characters(
    categories=["Cs"])), max_size=30))
# Mostly plausible text (non-blank, no NUL: what passes the first checks), sometimes any.
WORDS = st.text(st.one_of(st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
                          st.sampled_from(TRICKY.replace("\0", ""))), min_size=1, max_size=30).filter(
    str.strip)
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT)
JSON_VALUE = st.recursive(JSON_LEAF, lambda v: st.one_of(
    st.lists(v, max_size=3), st.dictionaries(st.sampled_from(
        ["role", "content", "text", "type", "prompt"]) | TEXT, v, max_size=3)), max_leaves=8)


@pytest.fixture(scope="module")
def voting(tmp_path_factory):
    """A store with three pairs and the real UI handlers over it (local mode)."""
    store = Store(None)
    pid = store.add_prompt("Which is better?")
    ids = [store.record_pair(pid, f"A{i}", f"B{i}", "base", "base", {}, i) for i in range(3)]
    svc = store_service(store, tmp_path_factory.mktemp("fuzz-votes"))
    return store, Handlers(svc, AppConfig()), ids


def as_pair_id(value) -> int | None:
    """The pair id a client value stands for, per the API's documented rules, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    return None


def clean_better(value) -> tuple[bool, str | None]:
    """(valid, stored value) of a better answer as the UI sends it."""
    if value is None:
        return True, None
    if not isinstance(value, str):
        return False, None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False, None
    text = value.strip()
    return len(text) <= MAX_BETTER, text or None


def stored_vote(store, pair_id: int, user: str) -> tuple | None:
    row = store.one("select choice, better_answer from votes where pair_id = ? and "
                    "annotator = ?", [pair_id, user])
    return (row["choice"], row["better_answer"]) if row else None


PAIR_IDS = st.one_of(st.integers(1, 3), st.integers(-3, 6), st.integers(2**62, 2**70),
                     st.floats(), st.text(st.sampled_from("0123 1.e-x٣"), max_size=4),
                     st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
VOTE_CHOICES = st.one_of(st.sampled_from(CHOICES), TEXT, st.none(), st.integers(),
                         st.lists(st.sampled_from(CHOICES), max_size=2))
BETTER = st.one_of(st.none(), TEXT, st.just(" " * 3), st.just("x" * (MAX_BETTER + 1)),
                   st.just(" y" * (MAX_BETTER // 2) + " "), st.integers(), st.lists(TEXT))


@FUZZ
@given(pair_id=PAIR_IDS, choice=VOTE_CHOICES, better=BETTER)
@example(pair_id=1.7, choice="a", better=None)  # voted on pair 1
@example(pair_id=float("inf"), choice="a", better=None)  # OverflowError
@example(pair_id=10**30, choice="a", better=None)  # OverflowError in SQLite
@example(pair_id=1, choice="a", better=5)  # AttributeError
@example(pair_id=1, choice="a", better="x\ud800")  # unclear codec message
def test_ui_vote_is_stored_or_cleanly_refused(voting, pair_id, choice, better):
    store, h, ids = voting
    before = db_snapshot(store)
    pid = as_pair_id(pair_id)
    ok_better, stored_better = clean_better(better)
    valid = pid in ids and isinstance(choice, str) and choice in CHOICES and ok_better
    try:
        reveal = h.commit_vote("fuzzer", pair_id, choice, better, 10)
    except gr.Error:
        assert not valid, "a valid vote was refused"
        assert db_snapshot(store) == before, "a refused vote changed the database"
        return
    assert valid, "an invalid vote was stored"
    assert reveal["pair_id"] == pid and reveal["choice"] == choice
    assert stored_vote(store, pid, "fuzzer") == (choice, stored_better)


ANNOTATORS = st.one_of(st.sampled_from(["ann", "bob"]), TEXT, st.just("x" * 65), st.none(),
                       st.integers())
DECIDE_MS = st.one_of(st.none(), st.integers(-5, 10**4), st.integers(2**62, 2**70),
                      st.floats(), st.booleans())


@FUZZ
@given(pair_id=PAIR_IDS, annotator=ANNOTATORS, choice=VOTE_CHOICES, better=BETTER,
       decide_ms=DECIDE_MS)
@example(pair_id=True, annotator="ann", choice="a", better=None, decide_ms=None)  # pair 1
@example(pair_id=1, annotator="ann", choice="a", better=None, decide_ms=2**70)  # Overflow
@example(pair_id=1, annotator="a\udc80", choice="a", better=None, decide_ms=None)
def test_store_vote_is_stored_or_refused_with_a_store_error(voting, pair_id, annotator,
                                                             choice, better, decide_ms):
    store, _, ids = voting
    before = db_snapshot(store)
    try:
        vote_id = store.record_vote(pair_id, annotator, choice, better, decide_ms)
    except StoreError:
        assert db_snapshot(store) == before, "a refused vote changed the database"
        return
    pid = as_pair_id(pair_id)
    assert pid in ids and choice in CHOICES and isinstance(annotator, str)
    assert isinstance(decide_ms, int) and not isinstance(decide_ms, bool) or decide_ms is None
    row = store.one("select * from votes where id = ?", [vote_id])
    assert (row["pair_id"], row["annotator"], row["choice"]) == (pid, annotator, choice)
    assert row["better_answer"] == clean_better(better)[1]


# --------------------------------------------------------------------------- importers
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-files")


def check_import(do_import, path: Path, data: bytes, store: Store):
    """Run one import of ``data``: the result, or None after checking a clean refusal."""
    path.write_bytes(data)
    before = db_snapshot(store)
    try:
        result = do_import(store, path)
        event("imported")
        return result
    except ImportFailed as e:
        event(f"refused: {e.problem.split('(')[0][:40]}")
        assert str(e).startswith(path.name), e
        assert db_snapshot(store) == before, "a refused import changed the database"
        return None


def lines_of(rows: list[str], newline: str) -> bytes:
    return newline.join(rows).encode("utf-8", "surrogatepass")


RAW_BYTES = st.one_of(st.binary(max_size=300), TEXT.map(lambda t: t.encode("utf-8",
                                                                           "surrogatepass")))


def prompt_lines(t: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.one_of(t, st.fixed_dictionaries({"prompt": t}).map(json.dumps)),
                    min_size=1, max_size=5)


PROMPT_FILES = st.one_of(  # plausible files half of the time, so imports succeed too
    RAW_BYTES, st.tuples(prompt_lines(WORDS), st.sampled_from(["\n", "\r\n"])).map(
        lambda t: lines_of(["prompt", *t[0]], t[1])),
    st.tuples(prompt_lines(st.one_of(TEXT, JSON_VALUE.map(json.dumps))), st.just("\n")).map(
        lambda t: lines_of(t[0], t[1])))


@FUZZ
@given(ext=st.sampled_from([".txt", ".jsonl", ".csv"]), data=PROMPT_FILES)
@example(ext=".jsonl", data=b'{"prompt": "a\\ud800"}\n')  # crashed sqlite (lone surrogate)
@example(ext=".jsonl", data=b"[" * 100_000)  # RecursionError
def test_prompt_import_succeeds_or_changes_nothing(workdir, ext, data):
    store = Store(None)
    store.add_prompts(["Already here"])
    n_before = store.counts()["prompts"]
    added = check_import(import_prompts, workdir / f"prompts{ext}", data, store)
    if added is not None:
        assert added >= 0 and store.counts()["prompts"] == n_before + added
        assert all(r["text"] == r["text"].strip() and r["text"]
                   for r in store.query("select text from prompts"))


def pref_rows(t: st.SearchStrategy, label: st.SearchStrategy) -> st.SearchStrategy:
    """TRL DPO rows (plain and conversational) or KTO rows whose texts come from ``t``."""
    messages = st.lists(st.fixed_dictionaries({
        "role": st.sampled_from(["user", "assistant", "system"]),
        "content": t | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": t}),
                                min_size=1, max_size=2)}), min_size=1, max_size=3)
    return st.one_of(
        st.lists(st.fixed_dictionaries({"prompt": t, "chosen": t, "rejected": t}),
                 min_size=1, max_size=4),
        st.lists(st.fixed_dictionaries({"chosen": messages, "rejected": messages},
                                       optional={"prompt": messages | t}), min_size=1,
                 max_size=3),
        st.lists(st.fixed_dictionaries({"prompt": t, "completion": t, "label": label}),
                 min_size=1, max_size=4))


PREF_FILES = st.one_of(
    pref_rows(WORDS, st.booleans()), pref_rows(WORDS, st.booleans()),
    pref_rows(st.one_of(WORDS, TEXT, JSON_VALUE), st.booleans() | JSON_LEAF),
    st.lists(st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "completion",
                                              "label"]) | TEXT, JSON_VALUE), max_size=3))


@FUZZ
@given(rows=PREF_FILES, junk=st.one_of(st.none(), st.none(), TEXT), ascii_only=st.booleans())
@example(rows=[{"prompt": "p", "chosen": "\ud800", "rejected": "r"}], junk=None,
         ascii_only=True)  # crashed sqlite (lone surrogate)
@example(rows=[{"prompt": "p", "chosen": [{"role": "assistant", "content": [{"text": 1}]}],
                "rejected": "r"}], junk=None, ascii_only=True)  # TypeError
def test_prefs_jsonl_import_succeeds_or_changes_nothing(workdir, rows, junk, ascii_only):
    store = Store(None)
    before = store.counts()
    lines = [json.dumps(r, ensure_ascii=ascii_only) for r in rows] + ([junk] if junk else [])
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    result = check_import(import_prefs, workdir / "prefs.jsonl", data, store)
    if result is not None:
        after = store.counts()
        if result["format"] == "dpo":
            assert after["pairs"] - before["pairs"] == result["pairs"] == len(rows)
            assert after["votes"] - before["votes"] == len(rows)
        else:
            assert after["labels"] - before["labels"] == result["labels"] == len(rows)


ID = st.one_of(st.just(""), st.integers(0, 50).map(str), st.integers(0, 10**6).map(str))
NUMBER = st.one_of(ID, ID, ID, st.integers(10**17, 10**30).map(str),
                   st.sampled_from(["\u00b2", "\uff11\uff12", "-1", "1.5", " 7"]))


def vote_rows(t: st.SearchStrategy) -> st.SearchStrategy:
    """Rows of a votes CSV (as exported) whose texts come from ``t``."""
    return st.lists(st.fixed_dictionaries({
        "pair_id": NUMBER, "prompt": t, "response_a": t, "response_b": t,
        "version_a": st.sampled_from(["base", "v1"]) | t,
        "version_b": st.sampled_from(["base", "v2"]) | t,
        "arena": st.sampled_from(["0", "1", "", "true", "x"]),
        "annotator": st.sampled_from(["ann", "bob"]) | t,
        "choice": st.one_of(st.sampled_from(CHOICES), st.sampled_from(CHOICES), t),
        "better_answer": st.just("") | t,
        "decide_ms": NUMBER, "created": st.just("") | t}), min_size=1, max_size=3)


def vote(**fields) -> dict:
    return {**dict.fromkeys(VOTE_COLUMNS, ""), "prompt": "p", "response_a": "a",
            "response_b": "b", "version_a": "base", "version_b": "base", "annotator": "ann",
            "choice": "a", **fields}


@FUZZ
@given(rows=st.one_of(vote_rows(WORDS), vote_rows(WORDS), vote_rows(TEXT)),
       extra=st.one_of(st.just([]), st.just([]), st.lists(TEXT, max_size=1)),
       header=st.sampled_from([VOTE_COLUMNS, VOTE_COLUMNS, VOTE_COLUMNS[::-1],
                               VOTE_COLUMNS[:8]]))
@example(rows=[vote(), vote(pair_id="1", prompt="q")], extra=[],
         header=VOTE_COLUMNS)  # a kept id 1 clashed with the new id of the id-less pair
@example(rows=[vote(decide_ms="9" * 20)], extra=[], header=VOTE_COLUMNS)  # OverflowError
@example(rows=[vote(pair_id="\u00b2")], extra=[], header=VOTE_COLUMNS)  # int("²") failed
def test_votes_csv_import_succeeds_or_changes_nothing(workdir, rows, extra, header):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")  # quotes fields with \r too
    w.writerow(header)
    w.writerows([[r.get(c, "") for c in header] + extra for r in rows])
    store = Store(None)
    result = check_import(import_prefs, workdir / "votes.csv",
                          buf.getvalue().encode("utf-8", "surrogatepass"), store)
    if result is not None:
        assert store.counts()["votes"] <= result["votes"] == len(rows)


# Text a model or an annotator can produce (no lone surrogates). No NUL: the votes CSV
# holds it raw, and the importer takes NUL bytes for a binary file (a known limit).
SAFE_TEXT = st.text(st.one_of(st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
                              st.sampled_from(TRICKY.replace("\x00", ""))), min_size=1,
                    max_size=20).filter(lambda t: t.strip())


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(pairs=st.lists(st.tuples(SAFE_TEXT, SAFE_TEXT, SAFE_TEXT, st.sampled_from(CHOICES),
                                st.none() | SAFE_TEXT), min_size=1, max_size=3))
def test_export_import_export_is_identical_for_any_text(pairs):
    """Whatever text the model or an annotator produced survives every export format."""
    store = Store(None)
    for i, (prompt, a, b, choice, better) in enumerate(pairs):
        if a == b:
            continue
        pair = store.record_pair(store.add_prompt(prompt), a, b, "base", "base", {}, i)
        store.record_vote(pair, "ann", choice, better)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, ext in (("dpo", "jsonl"), ("kto", "jsonl"), ("votes", "csv")):
            first, second = Path(tmp) / f"1.{ext}", Path(tmp) / f"2.{ext}"
            if not export(store, fmt, first):
                continue
            fresh = Store(None)
            import_prefs(fresh, first)
            export(fresh, fmt, second)
            if fmt == "dpo":  # a written answer's row shares its pair's id: renumbered
                def rows(f):
                    return [{k: v for k, v in json.loads(x).items() if k != "pair_id"}
                            for x in f.read_text(encoding="utf-8").split("\n") if x]
                assert rows(first) == rows(second)
            else:
                assert first.read_bytes() == second.read_bytes(), fmt
