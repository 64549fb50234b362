import pytest

from tests.svc_fixtures import tiny_service, vote_all
from trainer.pool import PlannedPair
from trainer.training.rounds import load_examples


@pytest.fixture
def svc(tmp_path, tiny_model_dir):
    return tiny_service(tmp_path / "data", tiny_model_dir)


def test_fill_records_pairs_with_versions_seed_and_config(svc):
    ids = svc.pool.fill_once(4)
    assert len(ids) == 4 and svc.store.ready_pair_count() == 4
    pair = svc.store.get_pair(ids[0])
    assert pair["version_a"] == pair["version_b"] == "base" and not pair["arena"]
    assert pair["response_a"] != pair["response_b"] and pair["response_a"]
    assert isinstance(pair["seed"], int)
    assert pair["gen_config"]["max_new_tokens"] == 10 and pair["gen_config"]["top_p"] == 0.95
    # least-served first: four different prompts
    assert len({svc.store.get_pair(i)["prompt_id"] for i in ids}) == 4


def test_identical_samples_are_resampled_never_shown(svc, monkeypatch):
    from trainer.model.generate import Sample

    calls = []

    def fake_sample(prompts, version, seed):  # first try: identical pair; then distinct
        calls.append(len(prompts))
        if len(calls) == 1:
            return [Sample("same", 1) for _ in prompts]
        return [Sample(f"text {i}", 2) for i in range(len(prompts))]

    monkeypatch.setattr(svc.sampler, "sample", fake_sample)
    ids = svc.pool.produce([PlannedPair(1, "q", False)], None)
    assert calls == [2, 2]  # resampled once
    pair = svc.store.get_pair(ids[0])
    assert pair["response_a"] != pair["response_b"]
    monkeypatch.setattr(svc.sampler, "sample",
                        lambda p, v, s: [Sample("", 0) for _ in p])
    assert svc.pool.produce([PlannedPair(1, "q", False)], None) == []  # never stored
    # One empty side is a real comparison: a policy collapsing to empty answers must
    # still be shown, so that votes against the empty answer can correct it.
    monkeypatch.setattr(svc.sampler, "sample",
                        lambda p, v, s: [Sample("" if i % 2 else "an answer", 2)
                                         for i in range(len(p))])
    (kept,) = svc.pool.produce([PlannedPair(1, "q", False)], None)
    pair = svc.store.get_pair(kept)
    assert (pair["response_a"], pair["response_b"]) == ("an answer", "")


def test_pairs_record_how_each_answer_ended(svc, monkeypatch):
    """Training scores each answer with the end it really had, none if it was cut."""
    from trainer.model.generate import Sample

    monkeypatch.setattr(svc.sampler, "sample", lambda p, v, s: [
        Sample("it ends.", 3, True, "<eos>"), Sample("it runs on and on", 10, False, "")
    ] * (len(p) // 2))
    (pid,) = svc.pool.produce([PlannedPair(1, "q", False)], None)
    pair = svc.store.get_pair(pid)
    assert (pair["end_a"], pair["end_b"]) == ("<eos>", "")
    svc.store.record_vote(pid, "ann", "a")
    train, held, _ = load_examples(svc.store, svc.train_cfg, svc.sampler.format,
                                   svc.sampler.scored,
                                   lambda ids: svc.policy.tokenizer.decode(
                                       ids, skip_special_tokens=True))
    (ex,) = train + held
    assert ex.chosen == " it ends.<eos>"  # ended with EOS, not the usual "\nQuestion:"
    assert ex.rejected == " it runs on and on"  # cut: no end the model never wrote


def test_arena_pairs_after_a_round(svc):
    svc.pool.fill_once(4)
    vote_all(svc)
    assert svc.trainer.run_one("test").status == "accepted"
    svc.pool.cfg = type(svc.pool.cfg)(**{**svc.pool.cfg.__dict__, "arena_fraction": 1.0})
    ids = svc.pool.fill_once(4)
    pairs = [svc.store.get_pair(i) for i in ids]
    assert all(p["arena"] for p in pairs)
    assert all({p["version_a"], p["version_b"]} == {"v1", "base"} for p in pairs)
    reveal = svc.vote("bob", pairs[0]["id"], "a")
    assert reveal["arena"] and {reveal["version_a"], reveal["version_b"]} == {"v1", "base"}


def test_hot_swap_retires_stale_pairs_and_pool_refills(svc):
    svc.pool.fill_once(4)
    vote_all(svc)
    old = svc.pool.fill_once(3)  # queued from base
    assert svc.trainer.run_one("test").status == "accepted"  # hot-swap to v1
    assert all(svc.store.get_pair(i)["status"] == "expired" for i in old)
    assert svc.store.ready_pair_count() == 0
    new = svc.pool.fill_once(2)
    assert all(svc.store.get_pair(i)["version_a"] == "v1" for i in new)
    reveal = svc.vote("alice", svc.next_pair("alice")["id"], "a")
    assert reveal["reward_a"] is not None  # the implicit reward of the serving policy


def test_producer_thread_fills_and_survives_errors(svc, monkeypatch):
    import time

    real = svc.pool.fill_once
    failures = iter([RuntimeError("injected generation failure")])

    def flaky(k):
        err = next(failures, None)
        if err:
            raise err
        return real(k)

    monkeypatch.setattr(svc.pool, "fill_once", flaky)
    svc.pool.start()
    deadline = time.time() + 60
    while svc.store.ready_pair_count() < 4 and time.time() < deadline:
        time.sleep(0.2)
    svc.pool.stop()
    st = svc.pool.status()
    assert svc.store.ready_pair_count() >= 4
    assert st["errors"] == 1 and "injected generation failure" in st["last_error"]


def test_stop_ends_the_batch_being_sampled_without_an_error(tmp_path, tiny_model_dir,
                                                             monkeypatch):
    """A batch that would take over a minute (a slow step, many tokens) does not hold
    up a stop: the producer thread ends within the stop's join, none of it counted as
    a generation error."""
    import threading
    import time

    svc = tiny_service(tmp_path / "data", tiny_model_dir, "--max-new-tokens", "400")
    model, inside = svc.policy.model, threading.Event()
    real_forward = model.forward

    def slow(*a, **k):
        inside.set()
        time.sleep(0.2)  # 400 steps: 80 s for the batch
        return real_forward(*a, **k)

    monkeypatch.setattr(model, "forward", slow)
    svc.pool.start()
    assert inside.wait(30)
    svc.stop()
    assert not svc.pool.status()["running"], "the stop waited for the whole batch"
    assert svc.pool.errors == 0 and svc.store.ready_pair_count() == 0


def test_hot_swap_waits_for_the_batch_being_sampled(svc, monkeypatch):
    """A swap that lands mid-batch must not unload the version the batch samples from."""
    import threading

    svc.pool.fill_once(4)
    vote_all(svc)
    assert svc.trainer.run_one("test").status == "accepted"  # serving v1
    svc.pool.cfg = type(svc.pool.cfg)(**{**svc.pool.cfg.__dict__, "arena_fraction": 0.0})
    real, inside, release = svc.sampler.sample, threading.Event(), threading.Event()

    def slow_sample(prompts, version, seed):
        inside.set()
        release.wait(30)  # the swap below is attempted while the batch is half done
        return real(prompts, version, seed)

    monkeypatch.setattr(svc.sampler, "sample", slow_sample)
    out: dict = {}
    producer = threading.Thread(target=lambda: out.setdefault("ids", svc.pool.fill_once(2)))
    producer.start()
    assert inside.wait(30)
    swapper = threading.Thread(target=lambda: svc.rollback("base"))  # unloads v1
    swapper.start()
    swapper.join(1.0)
    assert swapper.is_alive(), "the swap must wait for the batch in progress"
    release.set()
    producer.join(60)
    swapper.join(60)
    assert len(out["ids"]) == 2 and svc.pool.errors == 0
    pairs = [svc.store.get_pair(i) for i in out["ids"]]
    assert all(p["version_a"] == p["version_b"] == "v1" for p in pairs)
    assert all(p["gen_config"]["reward_a"] is not None for p in pairs)  # scored under v1
    assert all(p["status"] == "expired" for p in pairs)  # retired by the swap to base


def test_the_pool_refills_half_a_batch_at_a_time():
    """Consuming a pair or two does not start a batch of one or two prompts: the
    producer samples again once half a batch is missing, and tops the queue up."""
    import threading
    import time

    from trainer.config import PoolConfig
    from trainer.pool import PairPool, refill_size

    assert refill_size(PoolConfig(ready_pairs=16, batch_prompts=16)) == 8
    assert refill_size(PoolConfig(ready_pairs=4, batch_prompts=16)) == 2
    assert refill_size(PoolConfig(ready_pairs=1, batch_prompts=16)) == 1

    class Store:
        ready = 16

        def release_stale_assignments(self, after_s):
            return 0

        def ready_pair_count(self, kind=None):
            return self.ready

    store, asked, woke = Store(), [], threading.Event()
    pool = PairPool(None, store, None, PoolConfig(ready_pairs=16, batch_prompts=16),
                    reference=lambda v: v, beta=0.1, max_length=64)

    def fill_once(k):
        asked.append(k)
        store.ready += k
        woke.set()
        return list(range(k))

    pool.fill_once = fill_once
    pool.start()
    try:
        for ready in (15, 10, 9):  # 1, 6, 7 missing: not yet
            store.ready = ready
            pool.wake()
            time.sleep(0.3)
        assert asked == []
        store.ready = 8  # half a batch missing
        pool.wake()
        assert woke.wait(5) and asked == [8] and store.ready == 16
    finally:
        pool.stop()
    # A refill goes on up to ready_pairs even when the last batch is under half a batch.
    store.ready, asked[:] = 0, []
    pool = PairPool(None, store, None, PoolConfig(ready_pairs=5, batch_prompts=4),
                    reference=lambda v: v, beta=0.1, max_length=64)
    pool.fill_once = fill_once
    pool.start()
    try:
        deadline = time.time() + 5
        while store.ready < 5 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        pool.stop()
    assert asked == [4, 1] and store.ready == 5


def test_after_a_hot_swap_old_pairs_stay_on_offer_until_new_ones_exist(svc):
    """With the producer running, a new version's first batch is sampled before the old
    queued pairs expire: an annotator is never left without a pair meanwhile."""
    import time

    svc.pool.fill_once(4)
    vote_all(svc)
    old = svc.pool.fill_once(3)  # queued from base
    real, seen = svc.pool.fill_once, []

    def fill_once(k):
        seen.append([svc.store.get_pair(i)["status"] for i in old])  # before the batch
        return real(k)

    svc.pool.fill_once = fill_once
    svc.pool.start()
    try:
        assert svc.trainer.run_one("test").status == "accepted"  # hot-swap to v1
        deadline = time.time() + 60
        while (any(svc.store.get_pair(i)["status"] != "expired" for i in old)
               and time.time() < deadline):
            time.sleep(0.1)
    finally:
        svc.pool.stop()
    assert seen and seen[0] == ["queued"] * 3  # still offered while v1's batch was sampled
    assert all(svc.store.get_pair(i)["status"] == "expired" for i in old)
    fresh = [p for p in svc.store.query("select version_a from pairs where status = 'queued'")]
    assert fresh and all(p["version_a"] == "v1" for p in fresh)
