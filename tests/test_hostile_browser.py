"""Hostile text in a real Chromium: prompts, model answers, better answers and imported
version names that carry <script>, onerror/onload handlers, javascript: and data: links,
control characters, bidi overrides and 1 MB are stored byte for byte and shown as inert
text. No payload runs (no window flag, no dialog), no element they name appears, the page
keeps working (votes land in SQLite) and huge texts are cut on screen only."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from tests.hostile_fixtures import (
    CONTROL,
    HUGE_CHARS,
    LINK_PAYLOADS,
    RTL,
    TAG_PAYLOADS,
    huge_text,
    sqlite_value,
)
from tests.svc_fixtures import tiny_service
from tests.ui_fixtures import chromium_page, launch_app, skip_without_chromium

pytestmark = pytest.mark.browser
PANES = "#ldpo-prompt, #ldpo-response-a, #ldpo-response-b, #ldpo-reveal, #ldpo-progress"
HALF = len(TAG_PAYLOADS) // 2
PAIRS = [  # (prompt, response A, response B), shown in this order
    ("Which is safer?\n\n" + "\n\n".join(TAG_PAYLOADS[:HALF]),
     "\n\n".join(TAG_PAYLOADS[HALF:]), "\n\n".join(LINK_PAYLOADS)),
    (f"{RTL} {TAG_PAYLOADS[1]}", CONTROL, RTL),
    ("Huge answer ahead " + TAG_PAYLOADS[0], huge_text(), "short <svg onload=alert(3)>"),
]
BETTER = f"Better: {TAG_PAYLOADS[0]} {LINK_PAYLOADS[0]} {RTL} tab\there bell\x07 esc\x1b[0m"
ASK = f"Ask {TAG_PAYLOADS[1]} {RTL} \x07\x1b[1m {LINK_PAYLOADS[3]}"
VERSION = '<img src=x onerror="window.xssVersion=1">'
# Every element a payload could smuggle in, any on* attribute, any script-scheme link
# (the icon of Gradio's copy button on code blocks and KaTeX's MathML are the renderer's
# own elements; their attributes and links are still checked).
INERT_JS = """(sel) => {
  const bad = [];
  const tags = ["script", "img", "svg", "iframe", "object", "embed", "style", "math",
                "details", "animate", "link", "meta", "base", "form", "video", "audio"];
  for (const root of document.querySelectorAll(sel)) {
    for (const el of root.querySelectorAll("*")) {
      const tag = el.tagName.toLowerCase();
      const own = el.closest("button.copy_code_button, .katex");  // renderer output
      if (tags.includes(tag) && !own) bad.push(tag);
      for (const a of el.attributes) if (a.name.startsWith("on")) bad.push(tag + "@" + a.name);
      if (tag === "a" && el.href && !["http:", "https:", ""].includes(el.protocol))
        bad.push("href " + el.href);
    }
  }
  return bad;
}"""
FLAGS_JS = "Object.keys(window).filter(k => k.startsWith('xss'))"
# The nearest block around each bidi override must sit inside the content, away from the
# pair header and the buttons: the override cannot reorder the page around it.
BIDI_JS = """() => {
  const out = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    const node = walk.currentNode;
    if (!node.data.includes("\\u202e")) continue;
    const block = node.parentElement.closest("p, li, td, div, pre, h1, h2, h3, h4");
    out.push({inContent: !!node.parentElement.closest("#ldpo-prompt, #ldpo-response-a, "
                + "#ldpo-response-b, table"),
              header: block.innerText.includes("(pair "),
              buttons: block.querySelectorAll("button").length});
  }
  return out;
}"""


def visible(page, selector: str) -> str:
    """The element's rendered text, zero-width spaces (used to break schemes) removed."""
    return page.locator(selector).inner_text(timeout=60_000).replace("\u200b", "")


def assert_inert(page, dialogs: list, selector: str = PANES) -> None:
    page.wait_for_timeout(300)  # let any onerror/onload/ontoggle that could fire, fire
    assert page.evaluate(FLAGS_JS) == [], "a payload ran"
    assert dialogs == [], f"a payload opened a dialog: {dialogs}"
    assert page.evaluate(INERT_JS, selector) == []


def votes_csv(tmp: Path) -> Path:
    """An exported-style votes CSV of one arena pair with a hostile version name."""
    buf = io.StringIO()
    cols = ["pair_id", "prompt", "response_a", "response_b", "version_a", "version_b",
            "arena", "annotator", "choice", "better_answer", "decide_ms", "created"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerow({"pair_id": 900, "prompt": "Imported " + TAG_PAYLOADS[2],
                "response_a": TAG_PAYLOADS[3], "response_b": LINK_PAYLOADS[0],
                "version_a": VERSION, "version_b": "base", "arena": 1, "annotator": "imp",
                "choice": "a", "better_answer": TAG_PAYLOADS[4], "decide_ms": 5,
                "created": ""})
    path = tmp / "hostile-votes.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    skip_without_chromium()
    from storage.io import import_prefs

    tmp = tmp_path_factory.mktemp("hostile-browser")
    svc = tiny_service(tmp / "data", tiny_model_dir)  # model loaded; pool/trainer idle
    import_prefs(svc.store, votes_csv(tmp))
    ids = [svc.store.record_pair(svc.store.add_prompt(p, source="import"), a, b, "base",
                                 "base", {}, seed=0) for p, a, b in PAIRS]
    demo, url = launch_app(svc, tmp)
    yield svc, url, ids
    demo.close()
    svc.stop()


@pytest.fixture(scope="module")
def browser_page():
    with chromium_page() as page:
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        yield page, dialogs


def wait_pair(page, pair_id: int) -> None:
    page.wait_for_selector(f"#ldpo-prompt >> text=(pair {pair_id})", timeout=90_000)


def test_hostile_pairs_are_inert_and_votes_still_land(app, browser_page):
    svc, url, (p1, p2, p3) = app
    page, dialogs = browser_page
    page.goto(url)
    wait_pair(page, p1)
    assert_inert(page, dialogs)
    shown = visible(page, "#ldpo-prompt") + visible(page, "#ldpo-response-a")
    for payload in TAG_PAYLOADS:  # raw HTML is on screen as the characters typed
        assert payload in shown, payload
    page.locator("#ldpo-better textarea").fill(BETTER)
    page.click("#vote-a")
    page.locator("#ldpo-reveal").get_by_text(f"Your vote on pair {p1}").wait_for()

    wait_pair(page, p2)
    assert_inert(page, dialogs)
    assert "end-of-control" in visible(page, "#ldpo-response-a")
    assert "\u202e" in page.locator("#ldpo-response-b").text_content()
    bidi = page.evaluate(BIDI_JS)
    assert len(bidi) >= 2 and all(b["inContent"] and not b["header"] and not b["buttons"]
                                  for b in bidi), bidi
    page.keyboard.press("2")  # the shortcuts still work on this page

    wait_pair(page, p3)
    assert_inert(page, dialogs)
    note = f"Showing the first 20,000 of {HUGE_CHARS:,} characters; the whole text is stored"
    assert note in visible(page, "#ldpo-response-a")
    page.click("#vote-tie")
    page.locator("#ldpo-reveal").get_by_text(f"Your vote on pair {p3}").wait_for()
    assert_inert(page, dialogs)

    votes = svc.store.query("select pair_id, choice, better_answer from votes where "
                            "annotator = 'local' order by id")
    assert [(v["pair_id"], v["choice"]) for v in votes] == [(p1, "a"), (p2, "b"), (p3, "tie")]
    data = Path(svc.data_dir)  # the SQLite file holds exactly what was sent, as text
    assert sqlite_value(data, "select better_answer from votes where pair_id = ?",
                        (p1,)) == BETTER
    assert sqlite_value(data, "select typeof(better_answer) from votes where pair_id = ?",
                        (p1,)) == "text"
    for pid, (prompt, a, b) in zip((p1, p2, p3), PAIRS):
        assert sqlite_value(data, "select response_a from pairs where id = ?", (pid,)) == a
        assert sqlite_value(data, "select response_b from pairs where id = ?", (pid,)) == b
        assert sqlite_value(data, "select pr.text from pairs p join prompts pr on "
                                  "pr.id = p.prompt_id where p.id = ?", (pid,)) == prompt


def test_own_prompt_is_stored_as_typed_and_shown_inert(app, browser_page):
    svc, url, _ = app
    page, dialogs = browser_page
    box = page.locator("#ldpo-ask textarea, #ldpo-ask input").first
    box.fill(ASK)
    page.get_by_role("button", name="Generate a pair").click()
    page.wait_for_function("document.querySelector('#ldpo-prompt').innerText"
                           ".includes('Ask <img')", timeout=90_000)
    assert_inert(page, dialogs)
    assert sqlite_value(Path(svc.data_dir), "select count(*) from prompts where text = ? and "
                                            "source = 'user'", (ASK,)) == 1


ROWS = ".virtual-row"  # the rows Gradio's table shows (beside a zero-height sizing copy)


def shown_row(page, text: str) -> None:
    """Wait for a table row laid out on the page that holds ``text`` as text."""
    page.wait_for_function("([sel, t]) => [...document.querySelectorAll(sel)].some(r => "
                           "r.getBoundingClientRect().height > 0 && r.textContent.includes(t))",
                           arg=[ROWS, text], timeout=60_000)


def test_data_and_leaderboard_tables_show_hostile_text_inert(app, browser_page):
    page, dialogs = browser_page
    page.get_by_role("tab", name="Data").click()
    shown_row(page, "Better: <script>window.xssScript")  # from the first test, cut short
    shown_row(page, TAG_PAYLOADS[4])  # the better answer of the imported vote
    assert_inert(page, dialogs, ROWS)
    page.get_by_role("tab", name="Leaderboard").click()
    shown_row(page, VERSION)  # an imported arena pair's version name
    assert_inert(page, dialogs, ROWS)
