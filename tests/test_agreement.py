"""storage/agreement.py against hand-computed and published values."""

import pytest

from storage import agreement as ag


def test_cohen_kappa_hand_computed():
    # 50 items: both a 20, both b 15, a/b 5, b/a 10 -> p_o 0.7, p_e 0.5*0.6 + 0.5*0.4 = 0.5
    pairs = [("a", "a")] * 20 + [("b", "b")] * 15 + [("a", "b")] * 5 + [("b", "a")] * 10
    assert ag.cohen_kappa(pairs) == pytest.approx(0.4)
    assert ag.cohen_kappa([("a", "a"), ("b", "b")]) == 1.0
    assert ag.cohen_kappa([]) is None


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four
    # coders, twelve units, missing values; nominal alpha = 0.743.
    rows = {"A": "1 2 3 3 2 1 4 1 2 . . .", "B": "1 2 3 3 2 2 4 1 2 5 . 3",
            "C": ". 3 3 3 2 3 4 2 2 5 1 .", "D": "1 2 3 3 2 4 4 1 2 5 1 ."}
    units = [{c: v.split()[u] for c, v in rows.items() if v.split()[u] != "."}
             for u in range(12)]
    assert ag.krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)
    assert ag.krippendorff_alpha([{"x": "a", "y": "a"}, {"x": "b", "y": "b"}]) == 1.0
    assert ag.krippendorff_alpha([{"x": "a"}]) is None


def _votes():
    out = []
    for i in range(30):  # ann and bob agree on 27 of 30 shared pairs; cyd disagrees often
        pid = i + 1
        ann = "a" if i % 2 else "b"
        bob = ann if i >= 3 else ("tie" if ann == "a" else "a")
        cyd = ann if i % 3 == 0 else ("b" if ann == "a" else "a")
        out += [{"pair_id": pid, "annotator": "ann", "choice": ann, "decide_ms": 1000 + i},
                {"pair_id": pid, "annotator": "bob", "choice": bob, "decide_ms": 2000},
                {"pair_id": pid, "annotator": "cyd", "choice": cyd, "decide_ms": 500}]
    out.append({"pair_id": 99, "annotator": "ann", "choice": "tie", "decide_ms": 10})
    return out


def test_summary_per_annotator_pairs_and_team():
    s = ag.summary(_votes(), {"bob": 2})
    assert s["overlapped_pairs"] == 30  # pair 99 was judged once
    rows = {r["annotator"]: r for r in s["annotators"]}
    assert rows["ann"]["votes"] == 31 and rows["bob"]["skip_rate"] == pytest.approx(2 / 32)
    assert rows["bob"]["median_decide_ms"] == 2000 and rows["ann"]["tie_rate"] == 1 / 31
    assert rows["cyd"]["flagged"] and not rows["ann"]["flagged"] and not rows["bob"]["flagged"]
    assert rows["cyd"]["agreement"] < rows["ann"]["agreement"]
    kappas = {tuple(k["annotators"]): k for k in s["pairwise_kappa"]}
    assert kappas[("ann", "bob")]["n"] == 30
    assert kappas[("ann", "bob")]["kappa"] > kappas[("ann", "cyd")]["kappa"]
    low, high = kappas[("ann", "bob")]["ci95"]
    assert low <= kappas[("ann", "bob")]["kappa"] <= high
    alpha = s["krippendorff_alpha"]
    assert alpha["n"] == 30 and alpha["ci95"][0] <= alpha["value"] <= alpha["ci95"][1]
    assert ag.summary(_votes(), {"bob": 2}) == s  # seeded: the same intervals every time


def test_team_tab_tables():
    from app.teamviews import team_frames, team_markdown

    s = ag.summary(_votes(), {"bob": 2})
    text = team_markdown(s)
    assert text.startswith("**Krippendorff's alpha** ") and "on 30 pairs" in text
    assert "Flagged, far below the others' agreement: **cyd**" in text
    people, pairs = team_frames(s)
    assert list(people["annotator"]) == ["ann", "bob", "cyd"]
    assert people.set_index("annotator").loc["cyd", "flagged"] == "yes"
    assert list(pairs["annotators"]) == ["ann & bob", "ann & cyd", "bob & cyd"]
    assert "No pair judged by two annotators yet" in team_markdown(ag.summary([], {}))


def test_two_active_annotators_share_the_picked_pairs(tmp_path, tiny_model_dir):
    from storage.common import is_overlap_pair
    from tests.svc_fixtures import tiny_service

    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--ready-pairs", "40")
    try:
        ids = svc.pool.fill_once(40)
        alone = svc.next_pair("ann")  # one active annotator: no pair waits for a second
        svc.vote("ann", alone["id"], "a")
        for _ in range(60):
            for who in ("ann", "bob"):
                pair = svc.next_pair(who)
                if pair:
                    svc.vote(who, pair["id"], "a" if pair["id"] % 3 else "b")
        judged = {}
        for r in svc.store.query("select pair_id, annotator from votes"):
            judged.setdefault(r["pair_id"], set()).add(r["annotator"])
        twice = {p for p, who in judged.items() if len(who) == 2}
        assert twice and twice <= {p for p in ids if is_overlap_pair(p, 0.15)}
        assert svc.store.agreement()["overlapped_pairs"] == len(twice)
    finally:
        svc.stop()
