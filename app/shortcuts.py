"""The Annotate tab's keyboard shortcuts, as the JavaScript the page loads once."""

# Shortcuts. A/B mode: 1/2/3/4/S click the vote buttons. Rank mode (its box is shown):
# 1-8 mark the best answer, Shift+1-8 the worst, Enter/T/X/S click its buttons. U undoes
# the last vote in both. Ignored
# while typing, with Ctrl/Alt/Meta, on key repeat, and when the Annotate tab is hidden.
SHORTCUTS_JS = """
() => {
  if (window.__livedpoKeys) return;
  window.__livedpoKeys = true;
  const pairKeys = {"1": "vote-a", "2": "vote-b", "3": "vote-tie", "4": "vote-both-bad",
                    "s": "vote-skip", "S": "vote-skip", "u": "vote-undo", "U": "vote-undo"};
  const rankKeys = {"Enter": "rank-submit", "t": "rank-tie", "T": "rank-tie",
                    "x": "rank-both-bad", "X": "rank-both-bad", "s": "rank-skip",
                    "S": "rank-skip", "u": "vote-undo", "U": "vote-undo"};
  const shown = (el) => el && el.offsetParent !== null;
  const press = (id, e) => {
    const el = document.getElementById(id);
    const btn = el && (el.tagName === "BUTTON" ? el : el.querySelector("button"));
    if (!btn || btn.disabled || !shown(btn)) return;
    e.preventDefault();
    btn.click();
  };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    const t = e.target;
    const typing = t && (t.isContentEditable || ["TEXTAREA", "SELECT"].includes(t.tagName)
      || (t.tagName === "INPUT" && !["radio", "checkbox", "button"].includes(t.type)));
    if (typing) return;
    if (shown(document.getElementById("ldpo-rank"))) {
      const digit = /^Digit([1-8])$/.exec(e.code || "");
      if (digit) {
        const group = e.shiftKey ? "rank-worst" : "rank-best";
        const box = document.querySelector(`#${group} input[value="${digit[1]}"]`);
        if (box && shown(box.closest("label") || box)) { e.preventDefault(); box.click(); }
        return;
      }
      if (rankKeys[e.key]) press(rankKeys[e.key], e);
      return;
    }
    if (pairKeys[e.key]) press(pairKeys[e.key], e);
  });
}
"""
