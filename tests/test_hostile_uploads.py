"""Bad uploads and import files: invalid UTF-8, UTF-16, binary (PNG, NUL bytes), empty
files, wrong or doubled columns, broken CSV quoting, 10 MB lines, deep JSON, lone
surrogates, path-traversal names. Each is refused with a message naming the file, the
line and the fix, through the import functions, the web UI's handler, the command line
and the running server, and the database is left exactly as it was."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import pytest

from app.api import Handlers
from app.cli import main
from app.config import AppConfig
from storage.db import Store
from storage.errors import ImportFailed
from storage.io import import_prompts
from tests.hostile_fixtures import (
    db_snapshot,
    error_of,
    file_data,
    fn_indices,
    run_event,
    session,
    store_service,
    upload,
)
from tests.ui_fixtures import launch_app

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00"
       b"\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05")
TEN_MB = b"x" * 10_000_000
DEEP = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
BAD_PROMPT_FILES = [  # (file name, content, what the message must say)
    ("bad-utf8.txt", b"ok\n\xff\xfe broken\n", "line 2: not valid UTF-8 (byte 0xff); save "
                                               "the file as UTF-8"),
    ("latin1.csv", "prompt\ncaf\u00e9\n".encode("latin-1"), "line 2: not valid UTF-8"),
    ("utf16.txt", "hello\n".encode("utf-16"), "line 1: UTF-16/UTF-32 text; save the file as "
                                              "UTF-8"),
    ("image.txt", PNG, "binary content (NUL bytes): expected a text file"),
    ("nul.jsonl", b'{"prompt": "a"}\n{"prompt": "b\x00"}\n', "line 2: binary content"),
    ("empty.txt", b"", "no prompts found"),
    ("blank.txt", b"\n  \n\t\n", "no prompts found"),
    ("empty.csv", b"", "line 1: missing column(s) prompt; found none"),
    ("cols.csv", b"question,answer\nwhy?,because\n", "line 1: missing column(s) prompt; "
                                                     "found question, answer"),
    ("twice.csv", b"prompt,prompt\na,b\n", "line 1: column(s) prompt appear twice"),
    ("ragged.csv", b"prompt,other\na,b\nc\n", "line 3: expected 2 fields"),
    ("quote.csv", b'prompt\n"never closed\nmore\n', "malformed CSV (unexpected end of data)"),
    ("keys.jsonl", b'{"prompt": "ok"}\n{"text": "x"}\n', 'line 2: missing key "prompt"'),
    ("list.jsonl", b'["x"]\n', "line 1: expected a JSON object per line, got list"),
    ("num.jsonl", b'{"prompt": 7}\n', "line 1: the prompt must be text, not int"),
    ("deep.jsonl", DEEP, "line 1: malformed JSON (nested too deeply)"),
    ("surrogate.jsonl", b'{"prompt": "a\\ud800"}\n', "line 1: a \\ud800-\\udfff escape"),
    ("huge-line.txt", b"ok\n" + TEN_MB + b"\n", "line 2: line has 10000000 characters (max "
                                                "1000000)"),
    ("long.txt", b"ok\n" + b"y" * 4001, "line 2: prompt has 4001 characters (limit 4000; "
                                        "shorten it or raise --max-prompt-chars)"),
    ("prompts", b"no extension\n", "unknown file type '(none)'; use .txt"),
    ("prompts.exe", b"MZ\x90\x00", "unknown file type '.exe'"),
]
ONE = re.escape


def filled_store() -> Store:
    """An in-memory store with a prompt, a pair and a vote already in it."""
    s = Store(None)
    pid = s.add_prompt("Already here")
    s.record_vote(s.record_pair(pid, "a", "b", "base", "base", {}, 1), "ann", "a")
    return s


@pytest.mark.parametrize("name,data,message", BAD_PROMPT_FILES,
                         ids=[f[0] for f in BAD_PROMPT_FILES])
def test_bad_prompt_file_is_refused_by_importer_and_handler(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    store = filled_store()
    before = db_snapshot(store)
    with pytest.raises(ImportFailed, match=ONE(f"{name}") + ".*" + ONE(message)) as info:
        import_prompts(store, path)
    assert str(info.value).endswith("Nothing was imported; fix the file and retry.")
    assert db_snapshot(store) == before
    h = Handlers(store_service(store, tmp_path), AppConfig())  # local mode: an admin
    with pytest.raises(gr.Error) as shown:
        h.import_prompts(str(path), None)
    assert shown.value.message.startswith(f"Nothing imported from {name}: {name}")
    assert message in shown.value.message
    assert db_snapshot(store) == before


def test_a_good_file_still_imports(tmp_path):
    path = tmp_path / "good.txt"
    path.write_text("First \u2028 prompt\nSecond <b>prompt</b>\n", encoding="utf-8")
    store = filled_store()
    h = Handlers(store_service(store, tmp_path), AppConfig())
    assert h.import_prompts(str(path), None) == "Imported 2 new prompt(s) from good.txt."
    assert store.one("select count(*) as n from prompts where text = ?",
                     ["First \u2028 prompt"])["n"] == 1  # U+2028 is text, not a line break


def test_handler_refuses_paths_that_are_not_uploads(tmp_path):
    store = filled_store()
    before = db_snapshot(store)
    h = Handlers(store_service(store, tmp_path), AppConfig())
    link = tmp_path / "host.txt"
    link.symlink_to("/etc/hostname")  # inside the temp dir, pointing out of it
    for path in ("../../etc/passwd.txt", "/etc/hostname", str(link), str(tmp_path)):
        with pytest.raises(gr.Error, match="not an uploaded file"):
            h.import_prompts(path, None)
    assert db_snapshot(store) == before


BAD_PREF_FILES = [
    ("bad.jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "\xff"}\n', "line 1: not valid "
                                                                           "UTF-8"),
    ("bin.jsonl", PNG, "binary content"),
    ("empty.jsonl", b"", "no rows found"),
    ("utf16.jsonl", '{"prompt": "p"}\n'.encode("utf-16"), "UTF-16"),
    ("huge.jsonl", b'{"prompt": "' + TEN_MB + b'"}\n', "line 1: line has 10000014 characters"),
    ("keys.jsonl", b'{"question": "p", "answer": "a"}\n', "unknown format (keys ['answer', "
                                                          "'question'])"),
    ("content.jsonl", b'{"prompt": "p", "chosen": [{"role": "assistant", "content": {"a": 1}}]'
                      b', "rejected": "r"}\n', 'line 1: a message "content" must be a string'),
    ("surrogate.jsonl", b'{"prompt": "p", "chosen": "\\udc80", "rejected": "r"}\n',
     "\\ud800-\\udfff escape"),
    ("cols.csv", b"pair_id,prompt\n1,p\n", "line 1: missing column(s) response_a"),
    ("passwd", b"root:x:0:0:root:/root:/bin/bash\n", "unknown file type '(none)'"),
]
VOTES_HEADER = ("pair_id,prompt,response_a,response_b,version_a,version_b,arena,annotator,"
                "choice,better_answer,decide_ms,created\n")
BAD_PREF_FILES += [
    ("digits.csv", (VOTES_HEADER + "\u00b2,p,a,b,base,base,0,ann,a,,,\n").encode(),
     "line 2: pair_id '\u00b2' is not a whole number of at most 18 digits"),
    ("overflow.csv", (VOTES_HEADER + "1,p,a,b,base,base,0,ann,a,," + "9" * 25 + ",\n").encode(),
     "line 2: decide_ms '9999999999999999999999999' is not a whole number"),
]


@pytest.mark.parametrize("name,data,message", BAD_PREF_FILES,
                         ids=[f[0] for f in BAD_PREF_FILES])
def test_bad_prefs_file_is_refused_by_the_cli(tmp_path, capsys, name, data, message):
    data_dir = tmp_path / "data"
    filled = Store.open(data_dir)
    filled.record_vote(filled.record_pair(filled.add_prompt("Here"), "a", "b", "base", "base",
                                          {}, 1), "ann", "a")
    assert main(["status", "--data-dir", str(data_dir)]) == 0  # seeds the default prompts
    before = db_snapshot(Store.open(data_dir))
    path = tmp_path / name
    path.write_bytes(data)
    capsys.readouterr()
    assert main(["import-prefs", str(path), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name}") and message in err
    assert "Nothing was imported; fix the file and retry." in err
    assert db_snapshot(Store.open(data_dir)) == before


def test_cli_import_of_a_missing_traversal_path_is_refused(tmp_path, capsys):
    data_dir = tmp_path / "data"
    assert main(["status", "--data-dir", str(data_dir)]) == 0
    before = db_snapshot(Store.open(data_dir))
    capsys.readouterr()
    assert main(["import-prompts", "../../../etc/passwd.txt", "--data-dir", str(data_dir)]) == 2
    assert "passwd.txt: no such file" in capsys.readouterr().err
    assert db_snapshot(Store.open(data_dir)) == before


# --------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real app (no model needed to import) on a store with some data."""
    tmp = tmp_path_factory.mktemp("hostile-uploads")
    store = Store.open(tmp / "data")
    store.add_prompts(["Already here"])
    demo, url = launch_app(store_service(store, tmp / "data"), tmp)
    yield store, demo, url
    demo.close()


def test_upload_with_traversal_name_stays_in_the_upload_folder(server, tmp_path):
    from gradio.utils import get_upload_folder

    store, demo, url = server
    [idx] = fn_indices(demo, "import_prompts")
    with session(url) as h:
        path = upload(h, "../../etc/passwd.txt", b"A prompt from an odd name\n")
        root = Path(get_upload_folder()).resolve()
        assert Path(path).resolve().is_relative_to(root) and Path(path).name == "passwd.txt"
        msg = run_event(h, idx, [file_data(path, "../../etc/passwd.txt")])
        assert msg["output"]["data"] == ["Imported 1 new prompt(s) from passwd.txt."]
        assert h.post("gradio_api/upload", files={"files": ("..", b"x\n")}).status_code == 400


def test_server_refuses_files_that_were_not_uploaded(server):
    store, demo, url = server
    [idx] = fn_indices(demo, "import_prompts")
    before = db_snapshot(store)
    with session(url) as h:
        uploaded = upload(h, "fine.txt", b"fine\n")
        for path in ("/etc/passwd", f"{uploaded}/../../../../etc/hostname",
                     str(Path(uploaded).parent / ".." / ".." / "etc" / "passwd.txt")):
            msg = run_event(h, idx, [file_data(path)])
            assert msg.get("success") is False, path
    assert db_snapshot(store) == before


@pytest.mark.parametrize("name,data,message", [BAD_PROMPT_FILES[0], BAD_PROMPT_FILES[3],
                                               BAD_PROMPT_FILES[-4]],
                         ids=["utf8", "png", "10MB-line"])
def test_bad_upload_gets_the_message_in_the_page(server, name, data, message):
    store, demo, url = server
    [idx] = fn_indices(demo, "import_prompts")
    before = db_snapshot(store)
    with session(url) as h:
        msg = run_event(h, idx, [file_data(upload(h, name, data))])
    assert f"Nothing imported from {name}: {name}, " in error_of(msg)
    assert message in error_of(msg)
    assert db_snapshot(store) == before
