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
    if fmt == "dpo":  # a written answer's row shares its pair id: it comes back as its own
        def rows(f):
            return [{k: v for k, v in json.loads(x).items() if k != "pair_id"}
                    for x in f.read_text().split("\n") if x]
        assert rows(first) == rows(second)
    else:
        assert first.read_bytes() == second.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


TALK = [{"role": "system", "content": "You are a ship's cook."},
        {"role": "user", "content": "What is for dinner?"},
        {"role": "assistant", "content": "Fish stew."},
        {"role": "user", "content": "And dessert?"}]


def _templated() -> Store:
    """A chat pair on a conversation, a chat pair under the project's system prompt, and a
    plain-template pair whose rejected answer was cut, voted on by two annotators."""
    from storage import conversation

    s = Store(None)
    talk = s.add_prompt(conversation.encode(TALK))
    hi = s.add_prompt("Hi?")
    chat = {"chat": True, "system_prompt": "Be brief."}
    p1 = s.record_pair(talk, "Apple pie.", "Nothing.", "v1", "v1", chat, 1,
                       end_a="<|im_end|>", end_b="<|im_end|>")
    p2 = s.record_pair(hi, "Hello!", "Go away, I am busy", "v2", "base", chat, 2,
                       end_a="<|im_end|>", end_b="")
    p3 = s.record_pair(hi, "Hello there.", "Hi hi hi hi", "base", "base",
                       {"chat": False, "system_prompt": "Be kind."}, 3, end_a="\nQuestion:",
                       end_b="")
    s.record_vote(p1, "ann", "a")
    s.record_vote(p1, "bob", "tie")
    s.record_vote(p1, "cyd", "a")
    s.record_vote(p2, "ann", "b")
    s.record_vote(p3, "bob", "a")
    return s


def test_dpo_export_is_trl_conversational_for_chat_pairs_and_framed_text_for_plain(tmp_path):
    f = tmp_path / "dpo.jsonl"
    assert export(_templated(), "dpo", f) == 3
    talk, hi, plain = (json.loads(x) for x in f.read_text().split("\n") if x)
    assert talk["prompt"] == TALK and talk["template"] == "chat"
    assert talk["chosen"] == [{"role": "assistant", "content": "Apple pie."}]
    assert (talk["votes"], talk["agreement"], talk["annotators"]) == (
        3, 0.6667, {"ann": "chosen", "bob": "tie", "cyd": "chosen"})
    assert hi["prompt"] == [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hi?"}]
    assert hi["chosen"] == [{"role": "assistant", "content": "Go away, I am busy"}]
    assert (hi["version_chosen"], hi["version_rejected"]) == ("base", "v2")
    assert (hi["chosen_end"], hi["rejected_end"]) == ("", "<|im_end|>")
    assert plain["template"] == "plain"
    assert plain["prompt"] == "Be kind.\n\nQuestion: Hi?\nAnswer:"
    assert (plain["chosen"], plain["rejected"]) == (" Hello there.\nQuestion:", " Hi hi hi hi")
    fresh, again = Store(None), tmp_path / "again.jsonl"
    assert import_prefs(fresh, f) == {"format": "dpo", "pairs": 3}
    export(fresh, "dpo", again)
    assert again.read_bytes() == f.read_bytes()  # conversations and system prompts too


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
