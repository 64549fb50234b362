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


def test_a_promoted_draft_answers_as_its_version_and_other_settings_miss():
    sampler, cache = CountingSampler(SamplingConfig(), []), health.AnswerCache()
    drawn, _ = cache.draw(sampler, ["p", "q"], [0, 0], TRAIN, seed=1)
    cache.promote("v1")
    served, hits = cache.draw(sampler, ["p", "q"], [0, 0], "v1", seed=2)
    assert hits == 2 and served == drawn and len(sampler.calls) == 1
    cache.forget_draft()  # nothing under TRAIN any more; v1's answers stay
    assert cache.draw(sampler, ["p"], [0], "v1", seed=3)[1] == 1
    hotter = CountingSampler(replace(SamplingConfig(), temperature=1.3), sampler.calls)
    _, hits = cache.draw(hotter, ["p"], [0], "v1", seed=4)
    assert hits == 0 and sampler.calls[-1] == ("v1", ["p"])  # a setting changed: sampled


def test_the_oldest_answers_go_first_beyond_the_limit():
    sampler, cache = CountingSampler(SamplingConfig(), []), health.AnswerCache(limit=3)
    cache.draw(sampler, ["a", "b", "c"], [0, 0, 0], BASE, seed=1)
    cache.draw(sampler, ["d"], [0], BASE, seed=2)
    assert len(cache) == 3
    _, hits = cache.draw(sampler, ["b", "c", "d"], [0, 0, 0], BASE, seed=3)
    assert hits == 3
    _, hits = cache.draw(sampler, ["a"], [0], BASE, seed=4)
    assert hits == 0


def test_the_next_round_samples_base_and_the_new_version_only_where_it_has_not(
        tmp_path, tiny_model_dir, monkeypatch):
    """Round 1 (serving base) accepts v1; round 2 (serving v1) finds base's answers and
    v1's (its draft's, from round 1's check) for the prompts both checks ask."""
    svc = voted_service(tmp_path, tiny_model_dir, "--health-samples", "6")
    real, calls = svc.sampler.sample, []

    def sample(prompts, version, seed, empty_retries=None):
        calls.append((version, list(prompts)))
        return real(prompts, version, seed, empty_retries)

    monkeypatch.setattr(svc.sampler, "sample", sample)
    first = svc.trainer.run_one("test")
    assert first.status == "accepted" and first.version == "v1", first.error
    assert first.metrics["health_reused"] == 0
    checked = {p for v, ps in calls if v == TRAIN for p in ps}
    svc.pool.fill_once(8)
    vote_all(svc)
    calls.clear()
    second = svc.trainer.run_one("test")
    assert second.status in ("accepted", "rejected") and "health_after" in second.metrics
    asked = {v: [p for w, ps in calls if w == v for p in ps] for v in ("v1", TRAIN, BASE)}
    n = second.metrics["health_after"]["n"]
    assert len(asked[TRAIN]) == n  # the draft: every answer sampled
    assert second.metrics["health_reused"] == 2 * n - len(asked["v1"]) - len(asked[BASE]) > 0
    assert checked & set(asked[TRAIN])  # the checks share prompts
    assert len(asked["v1"]) < n and len(asked[BASE]) < n  # v1's answers: its draft's
