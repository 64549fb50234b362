import json

import pytest

from storage.db import Store
from storage.errors import ImportFailed
from storage.io import export, import_prefs, import_prompts, read_prompts


def _filled() -> Store:
    s = Store(None)
    pid = s.add_prompt("Why is the sky blue?")
    qid = s.add_prompt('Say "hi", in CSV, please\nline two')
    p1 = s.record_pair(pid, "Rayleigh, scattering.", "Magic.", "base", "base", {}, 1,
                       end_a="\nQuestion:", end_b="")  # b was cut at the token limit
    p2 = s.record_pair(qid, "hi", "hello ✓", "v1", "base", {}, 2, arena=True)
    p3 = s.record_pair(pid, "x", "y", "base", "base", {}, 3)
    s.record_vote(p1, "ann", "a", decide_ms=1500)
    s.record_vote(p1, "bob", "a", better_answer="Air scatters blue light most.")
    s.record_vote(p2, "ann", "tie")
    s.record_vote(p3, "bob", "both_bad")
    return s


@pytest.mark.parametrize("fmt,ext", [("dpo", "jsonl"), ("kto", "jsonl"), ("votes", "csv")])
def test_export_import_export_is_identical(tmp_path, fmt, ext):
    first, second = tmp_path / f"1.{ext}", tmp_path / f"2.{ext}"
    assert export(_filled(), fmt, first) > 0
    fresh = Store(None)
    import_prefs(fresh, first)
    export(fresh, fmt, second)
    assert first.read_bytes() == second.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_votes_csv_keeps_how_each_answer_ended(tmp_path):
    """'' (cut), a stop string and unknown (None) all survive export -> import; a votes
    CSV from before the end_a/end_b columns imports with them unknown."""
    f = tmp_path / "v.csv"
    export(_filled(), "votes", f)
    fresh = Store(None)
    import_prefs(fresh, f)
    ends = {r["chosen"]: (r["chosen_end"], r["rejected_end"]) for r in fresh.training_pairs()
            if r["kind"] == "ab"}
    assert ends == {"Rayleigh, scattering.": ("\nQuestion:", "")}
    old = tmp_path / "old.csv"
    lines = f.read_text().splitlines()
    old.write_text("\n".join(",".join(x.split(",")[:12]) for x in lines[:1]) + "\n"
                   + "0,q,a,b,base,base,0,ann,a,,,\n")
    older = Store(None)
    import_prefs(older, old)
    assert [(r["chosen_end"], r["rejected_end"]) for r in older.training_pairs()] == [
        (None, None)]
    bad = tmp_path / "bad.csv"
    bad.write_text(lines[0] + "\n" + "0,q,a,b,base,base,0,ann,a,,,,<eos>,,,\n")
    with pytest.raises(ImportFailed, match="end_a '<eos>': leave it empty, or write a JSON"):
        import_prefs(Store(None), bad)


def test_conversational_dpo_rows(tmp_path):
    f = tmp_path / "conv.jsonl"
    f.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi?"}],
                             "chosen": [{"role": "assistant", "content": "Hello!"}],
                             "rejected": [{"role": "assistant", "content": "Go away."}]}) + "\n")
    s = Store(None)
    assert import_prefs(s, f) == {"format": "dpo", "pairs": 1}
    (row,) = s.training_pairs()
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("Hi?", "Hello!", "Go away.")


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("one\n\n two \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "three"}\n')
    (tmp_path / "p.csv").write_text("prompt,other\nfour,x\n")
    assert read_prompts(tmp_path / "p.txt") == ["one", "two"]
    s = Store(None)
    for name in ("p.txt", "p.jsonl", "p.csv"):
        import_prompts(s, tmp_path / name)
    assert s.counts()["prompts"] == 4


BAD = [
    ("bad.txt", b"ok\n\xff\xfe broken\n", "line 2: not valid UTF-8"),
    ("bin.txt", b"ok\x00\x01", "binary content"),
    ("bad.jsonl", b'{"prompt": "ok"}\n{"prompt": \n', "line 2: malformed JSON"),
    ("key.jsonl", b'{"prompt": "ok"}\n{"text": "x"}\n', 'line 2: missing key "prompt"'),
    ("cols.csv", b"question\nwhy?\n", "missing column(s) prompt"),
    ("empty.jsonl", b'{"prompt": "ok"}\n{"prompt": "  "}\n', "line 2: empty prompt"),
    ("long.txt", b"ok\n" + b"x" * 4001 + b"\n", "line 2: prompt has 4001 characters"),
    ("p.exe", b"MZ", "unknown file type '.exe'"),
    ("huge.txt", b"x" * 1_000_001, "line 1: line has 1000001 characters"),
]


@pytest.mark.parametrize("name,data,message", BAD)
def test_bad_prompt_files_change_nothing(tmp_path, name, data, message):
    s = Store(None)
    s.add_prompts(["already here"])
    before = s.counts()
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ImportFailed, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_prompts(s, tmp_path / name)
    assert s.counts() == before


@pytest.mark.parametrize("data,message", [
    (b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n',
     'line 2: missing key "rejected"'),
    (b'{"prompt": "p", "completion": "a", "label": "yes"}\n', '"label" must be true or false'),
    (b'{"foo": 1}\n', "unknown format"),
])
def test_bad_pref_files_change_nothing(tmp_path, data, message):
    s = _filled()
    before = s.counts()
    (tmp_path / "f.jsonl").write_bytes(data)
    with pytest.raises(ImportFailed, match=message):
        import_prefs(s, tmp_path / "f.jsonl")
    assert s.counts() == before


def test_bad_votes_csv_changes_nothing(tmp_path):
    s = _filled()
    export(s, "votes", tmp_path / "v.csv")
    text = (tmp_path / "v.csv").read_text().replace(",tie,", ",maybe,")
    (tmp_path / "v.csv").write_text(text)
    before = Store(None)
    with pytest.raises(ImportFailed, match="choice 'maybe'"):
        import_prefs(before, tmp_path / "v.csv")
    assert before.counts()["votes"] == 0
