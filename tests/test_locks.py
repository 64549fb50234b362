import threading
import time

from trainer.model.locks import PriorityLock


def test_reentrant_for_owner():
    lock = PriorityLock()
    with lock.hold(), lock.hold(priority=True):
        pass
    got = threading.Event()

    def other():  # another thread gets it only if the nested holds released it fully
        with lock.hold():
            got.set()

    t = threading.Thread(target=other, daemon=True)
    t.start()
    t.join(5)
    assert got.is_set(), "the lock was still held after two nested holds ended"


def test_priority_waiter_goes_first():
    lock = PriorityLock()
    order = []
    started = threading.Event()

    def holder():
        with lock.hold():
            started.set()
            time.sleep(0.3)

    def low():
        with lock.hold():
            order.append("train")

    def high():
        with lock.hold(priority=True):
            order.append("generate")

    t0 = threading.Thread(target=holder)
    t0.start()
    started.wait()
    t_low = threading.Thread(target=low)
    t_low.start()
    time.sleep(0.05)  # the low-priority waiter is queued first...
    t_high = threading.Thread(target=high)
    t_high.start()
    for t in (t0, t_low, t_high):
        t.join(5)
    assert order == ["generate", "train"]  # ...but generation is served first


def test_each_thread_sees_how_long_it_waited():
    lock = PriorityLock()
    held, go = threading.Event(), threading.Event()

    def owner():
        with lock.hold():
            held.set()
            go.wait(5)

    t = threading.Thread(target=owner)
    t.start()
    held.wait(5)
    before = lock.waited_seconds()
    threading.Timer(0.2, go.set).start()
    with lock.hold():
        pass
    t.join(5)
    assert lock.waited_seconds() - before >= 0.15
    seen = []
    other = threading.Thread(target=lambda: seen.append(lock.waited_seconds()))
    other.start()
    other.join(5)
    assert seen == [0.0]  # another thread's waits are its own
