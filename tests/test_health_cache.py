"""The answer-health check keeps the answers of versions that never change (health.AnswerCache)."""

from dataclasses import dataclass, replace

from tests.svc_fixtures import vote_all, voted_service
from trainer.config import SamplingConfig
from trainer.model.generate import Sample
from trainer.model.policy import BASE, TRAIN
from trainer.training import health


@dataclass
class CountingSampler:
    """Answers 'VERSION:PROMPT#CALL' and records every call: (version, prompts)."""

    cfg: SamplingConfig
    calls: list

    def sample(self, prompts, version, seed, empty_retries=None):
        self.calls.append((version, list(prompts)))
        return [Sample(f"{version}:{p}#{len(self.calls)}", 3) for p in prompts]


def test_base_answers_are_drawn_once_and_the_draft_every_time():
    sampler, cache = CountingSampler(SamplingConfig(), []), health.AnswerCache()
    first, hits = cache.draw(sampler, ["p", "q"], [0, 0], BASE, seed=1)
    assert hits == 0 and [s.text for s in first] == ["base:p#1", "base:q#1"]
    again, hits = cache.draw(sampler, ["q", "p", "r"], [0, 0, 0], BASE, seed=2)
    assert hits == 2 and [s.text for s in again] == ["base:q#1", "base:p#1", "base:r#2"]
    assert sampler.calls[-1] == (BASE, ["r"])  # only what was missing
    # The same prompt asked a second time within a check is another answer (k = 1).
    _, hits = cache.draw(sampler, ["p"], [1], BASE, seed=3)
    assert hits == 0 and sampler.calls[-1] == (BASE, ["p"])
    draft1, hits = cache.draw(sampler, ["p"], [0], TRAIN, seed=4)
    draft2, hits2 = cache.draw(sampler, ["p"], [0], TRAIN, seed=5)
    assert hits == hits2 == 0 and draft1[0].text != draft2[0].text  # never reused


def test_the_draft_is_never_kept_and_other_settings_miss():
    sampler, cache = CountingSampler(SamplingConfig(), []), health.AnswerCache()
    cache.draw(sampler, ["p", "q"], [0, 0], TRAIN, seed=1)
    assert len(cache) == 0  # a draft's answers are new every round
    first, _ = cache.draw(sampler, ["p"], [0], "v1", seed=2)
    again, hits = cache.draw(sampler, ["p"], [0], "v1", seed=3)
    assert hits == 1 and again[0].text == first[0].text
    assert again[0].token_ids is None  # only what the health measure reads is kept
    hotter = CountingSampler(replace(SamplingConfig(), temperature=1.3), sampler.calls)
    _, hits = cache.draw(hotter, ["p"], [0], "v1", seed=4)
    assert hits == 0 and sampler.calls[-1] == ("v1", ["p"])  # a setting changed: sampled


def test_answers_drawn_while_the_settings_change_are_not_kept():
    calls = []

    class EditedMidway(CountingSampler):
        def sample(self, prompts, version, seed, empty_retries=None):
            out = super().sample(prompts, version, seed, empty_retries)
            self.cfg = replace(self.cfg, top_k=5)  # an admin saved new settings meanwhile
            return out

    sampler, cache = EditedMidway(SamplingConfig(), calls), health.AnswerCache()
    got, _ = cache.draw(sampler, ["p"], [0], BASE, seed=1)
    assert len(got) == 1 and len(cache) == 0


def test_the_least_recently_used_answers_go_first_beyond_the_limit():
    sampler, cache = CountingSampler(SamplingConfig(), []), health.AnswerCache(limit=3)
    cache.draw(sampler, ["a", "b", "c"], [0, 0, 0], BASE, seed=1)
    cache.draw(sampler, ["a"], [0], BASE, seed=2)  # a hit: a is now the newest
    cache.draw(sampler, ["d"], [0], BASE, seed=3)  # b goes
    assert len(cache) == 3
    _, hits = cache.draw(sampler, ["a", "c", "d"], [0, 0, 0], BASE, seed=4)
    assert hits == 3
    # A full cache still answers a call whose hits and new answers exceed the limit.
    got, hits = cache.draw(sampler, ["a", "c", "d", "e", "f"], [0] * 5, BASE, seed=5)
    assert hits == 3 and len(got) == 5 and len(cache) == 3


def test_the_next_rounds_sample_base_and_serving_only_where_they_have_not(
        tmp_path, tiny_model_dir, monkeypatch):
    """Round 1 (serving base) accepts v1; round 2 (serving v1, a draft that answers with
    nothing: rejected) finds base's answers for the prompts both checks ask and samples
    v1 afresh; round 3 finds v1's answers too."""
    svc = voted_service(tmp_path, tiny_model_dir, "--health-samples", "6")
    real, calls, broken = svc.sampler.sample, [], []

    def sample(prompts, version, seed, empty_retries=None):
        calls.append((version, list(prompts)))
        if broken and version == TRAIN:
            return [Sample("", 0) for _ in prompts]
        return real(prompts, version, seed, empty_retries)

    def next_round():
        svc.pool.fill_once(8)
        vote_all(svc)
        calls.clear()
        out = svc.trainer.run_one("test")
        asked = {v: [p for w, ps in calls if w == v for p in ps] for v in ("v1", TRAIN, BASE)}
        return out, asked, out.metrics["health_after"]["n"]

    monkeypatch.setattr(svc.sampler, "sample", sample)
    first = svc.trainer.run_one("test")
    assert first.status == "accepted" and first.version == "v1", first.error
    assert first.metrics["health_reused"] == 0
    checked = {p for v, ps in calls if v == TRAIN for p in ps}
    broken.append(True)
    second, asked, n = next_round()
    assert second.status == "rejected" and "came out empty" in second.error
    assert len(asked[TRAIN]) == len(asked["v1"]) == n  # the draft, and v1 the first time
    assert checked & set(asked[TRAIN]) and len(asked[BASE]) < n  # base: kept answers
    assert second.metrics["health_reused"] == n - len(asked[BASE]) > 0
    broken.clear()
    third, asked, n = next_round()
    assert len(asked[TRAIN]) == n and len(asked["v1"]) < n  # v1's answers now kept
    assert third.metrics["health_reused"] == 2 * n - len(asked["v1"]) - len(asked[BASE])
