"""Pure formatting for the Team tab: agreement figures and disputed pairs as Markdown and
DataFrames (storage/agreement.py ``summary``, ``Store.disagreements``)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from app.views import CHOICE_LABELS
from storage import conversation


def _ci(ci) -> str:
    return f"{ci[0]:.2f} – {ci[1]:.2f}" if ci else ""


def team_markdown(summary: Mapping[str, Any]) -> str:
    """The team's agreement in one paragraph (storage/agreement.py ``summary``)."""
    alpha = summary["krippendorff_alpha"]
    if alpha["value"] is None:
        return ("*No pair judged by two annotators yet.* While two or more annotators are "
                "active, a share of pairs (`--overlap-fraction`, 15%) goes to two of them.")
    flagged = [r["annotator"] for r in summary["annotators"] if r["flagged"]]
    note = (" Flagged, far below the others' agreement: "
            + ", ".join(f"**{html.escape(n)}**" for n in flagged) + "." if flagged else "")
    return (f"**Krippendorff's alpha** {alpha['value']:.2f} (95% CI {_ci(alpha['ci95'])}) on "
            f"{alpha['n']} pairs judged by two or more annotators (1 = full agreement, 0 = "
            f"chance).{note}")


def team_frames(summary: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per annotator, per pair of annotators) tables for the Team tab."""
    pct = lambda x: None if x is None else round(100 * x, 1)  # noqa: E731
    people = pd.DataFrame([{
        "annotator": r["annotator"], "votes": r["votes"],
        "median decision (s)": (None if r["median_decide_ms"] is None
                                else round(r["median_decide_ms"] / 1000, 1)),
        "tie %": pct(r["tie_rate"]), "both bad %": pct(r["both_bad_rate"]),
        "skip %": pct(r["skip_rate"]), "agrees with others %": pct(r["agreement"]),
        "shared pairs": r["shared_pairs"], "flagged": "yes" if r["flagged"] else ""}
        for r in summary["annotators"]], columns=[
        "annotator", "votes", "median decision (s)", "tie %", "both bad %", "skip %",
        "agrees with others %", "shared pairs", "flagged"])
    pairs = pd.DataFrame([{
        "annotators": " & ".join(k["annotators"]),
        "Cohen's kappa": None if k["kappa"] is None else round(k["kappa"], 2),
        "95% CI": _ci(k["ci95"]), "pairs": k["n"]} for k in summary["pairwise_kappa"]],
        columns=["annotators", "Cohen's kappa", "95% CI", "pairs"])
    return people, pairs


ADJUDICATION_CHOICES = {"A is better": "a", "B is better": "b", "Tie": "tie",
                        "Both bad": "both_bad"}


def disputes_frame(items: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Disputed pairs (``Store.disagreements``): what each annotator chose."""
    cut = lambda t: (t[:120] + "…") if len(t) > 120 else t  # noqa: E731
    return pd.DataFrame([{
        "pair": i["pair_id"], "prompt": cut(conversation.last_user(i["prompt"])),
        "A": cut(i["response_a"]), "B": cut(i["response_b"]),
        "votes": ", ".join(f"{v['annotator']}: {CHOICE_LABELS.get(v['choice'], v['choice'])}"
                           for v in i["votes"])} for i in items],
        columns=["pair", "prompt", "A", "B", "votes"])
