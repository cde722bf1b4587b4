"""Micro-batcher unit tests, gated on asyncio events (no sleeps deciding outcomes)."""

from __future__ import annotations

import asyncio

import pytest

from service.scheduling.batcher import Batcher, BatcherHooks, DeadlineExceeded, Disconnected, Draining, QueueFull

pytestmark = pytest.mark.anyio


class Model:
    """A fake model: records batches; each call blocks until `release` is set (when gated)."""

    def __init__(self, gated: bool = False, fail_on: object = None, drop_one: bool = False) -> None:
        self.batches: list[list[object]] = []
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        if not gated:
            self.release.set()
        self.fail_on = fail_on
        self.drop_one = drop_one

    async def __call__(self, items: list[object]) -> list[object]:
        self.batches.append(list(items))
        self.entered.set()
        await self.release.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("boom")
        out = [("out", i) for i in items]
        return out[:-1] if self.drop_one else out


def make(model: Model, **kw: object) -> Batcher:
    opts: dict[str, object] = {"key": lambda item: "k", "max_batch_size": 4, "max_wait_s": 30.0, "queue_size": 16}
    opts.update(kw)
    b = Batcher(model, **opts)  # type: ignore[arg-type]
    b.start()
    return b


async def test_batch_of_n_forms_from_n_concurrent_requests() -> None:
    model = Model()
    b = make(model, max_batch_size=4, max_wait_s=30.0)  # only a full batch can end the wait
    results = await asyncio.wait_for(asyncio.gather(*(b.submit(i, deadline_s=10) for i in range(4))), 5)
    assert model.batches == [[0, 1, 2, 3]]
    assert [r[0] for r in results] == [("out", i) for i in range(4)]
    await b.close(1)


async def test_partial_batch_goes_after_max_wait() -> None:
    model = Model()
    b = make(model, max_batch_size=8, max_wait_s=0.02)
    results = await asyncio.wait_for(asyncio.gather(*(b.submit(i, deadline_s=10) for i in range(3))), 5)
    assert model.batches == [[0, 1, 2]]
    waits = [wait for _, wait in results]  # all three queued in one tick: the partial batch closed on max_wait
    assert min(waits) >= 0.015 and max(waits) < 5, waits
    await b.close(1)


async def test_requests_arriving_while_busy_form_the_next_batch() -> None:
    model = Model(gated=True)
    b = make(model, max_batch_size=3, max_wait_s=0.0)
    first = asyncio.ensure_future(b.submit("a", deadline_s=10))
    await asyncio.wait_for(model.entered.wait(), 5)
    rest = [asyncio.ensure_future(b.submit(x, deadline_s=10)) for x in "bcd"]
    await asyncio.sleep(0)
    assert b.depth == 3
    model.release.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert model.batches == [["a"], ["b", "c", "d"]]
    await b.close(1)


async def test_buckets_never_mix_and_oldest_bucket_goes_first() -> None:
    model = Model(gated=True)
    b = make(model, key=lambda item: item[0], max_batch_size=2, max_wait_s=0.0)
    blocker = asyncio.ensure_future(b.submit("z0", deadline_s=10))
    await asyncio.wait_for(model.entered.wait(), 5)
    futs = [asyncio.ensure_future(b.submit(x, deadline_s=10)) for x in ("a1", "b1", "a2", "b2", "a3")]
    await asyncio.sleep(0)
    model.release.set()
    await asyncio.wait_for(asyncio.gather(blocker, *futs), 5)
    assert model.batches == [["z0"], ["a1", "a2"], ["b1", "b2"], ["a3"]]
    await b.close(1)


async def test_queue_full_is_refused_immediately() -> None:
    model = Model(gated=True)
    rejected: list[str] = []
    b = make(model, queue_size=2, max_batch_size=1, max_wait_s=0.0, hooks=BatcherHooks(rejected=rejected.append))
    running = asyncio.ensure_future(b.submit(0, deadline_s=10))
    await asyncio.wait_for(model.entered.wait(), 5)
    queued = [asyncio.ensure_future(b.submit(i, deadline_s=10)) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await b.submit(3, deadline_s=10)
    assert rejected == ["queue_full"]
    model.release.set()
    await asyncio.wait_for(asyncio.gather(running, *queued), 5)
    await b.close(1)


async def test_expired_requests_are_dropped_before_the_model() -> None:
    model = Model(gated=True)
    dropped: list[str] = []
    b = make(model, max_batch_size=4, max_wait_s=0.0, hooks=BatcherHooks(dropped=dropped.append))
    blocker = asyncio.ensure_future(b.submit("slow", deadline_s=10))
    await asyncio.wait_for(model.entered.wait(), 5)
    doomed = asyncio.ensure_future(b.submit("late", deadline_s=0.01))
    kept = asyncio.ensure_future(b.submit("ok", deadline_s=10))
    with pytest.raises(DeadlineExceeded):
        await asyncio.wait_for(doomed, 5)
    model.release.set()
    await asyncio.wait_for(asyncio.gather(blocker, kept), 5)
    assert model.batches == [["slow"], ["ok"]]  # "late" never reached the model


async def test_disconnected_clients_are_not_computed() -> None:
    model = Model(gated=True)
    dropped: list[str] = []
    b = make(model, max_batch_size=4, max_wait_s=0.0, hooks=BatcherHooks(dropped=dropped.append))
    blocker = asyncio.ensure_future(b.submit("first", deadline_s=10))
    await asyncio.wait_for(model.entered.wait(), 5)

    async def gone() -> bool:
        return False

    ghost = asyncio.ensure_future(b.submit("ghost", deadline_s=10, alive=gone))
    live = asyncio.ensure_future(b.submit("live", deadline_s=10))
    await asyncio.sleep(0)
    model.release.set()
    with pytest.raises(Disconnected):
        await asyncio.wait_for(ghost, 5)
    await asyncio.wait_for(asyncio.gather(blocker, live), 5)
    assert model.batches == [["first"], ["live"]]
    assert dropped == ["disconnected"]
    await b.close(1)


async def test_error_fails_only_its_own_batch() -> None:
    model = Model(fail_on="bad")
    b = make(model, key=lambda item: item[0], max_batch_size=2, max_wait_s=0.01)
    bad = asyncio.gather(b.submit("bad", deadline_s=5), b.submit("bx", deadline_s=5), return_exceptions=True)
    good = asyncio.gather(b.submit("g1", deadline_s=5), b.submit("g2", deadline_s=5))
    bad_results, good_results = await asyncio.wait_for(asyncio.gather(bad, good), 5)
    assert all(isinstance(r, RuntimeError) for r in bad_results)
    assert [r[0] for r in good_results] == [("out", "g1"), ("out", "g2")]
    after = await asyncio.wait_for(b.submit("g3", deadline_s=5), 5)  # the loop survived
    assert after[0] == ("out", "g3")
    await b.close(1)


async def test_output_count_is_checked() -> None:
    b = make(Model(drop_one=True), max_batch_size=2, max_wait_s=30)
    results = await asyncio.wait_for(
        asyncio.gather(b.submit(1, deadline_s=5), b.submit(2, deadline_s=5), return_exceptions=True), 5
    )
    assert all(isinstance(r, RuntimeError) and "2 inputs" in str(r) for r in results)
    await b.close(1)


async def test_close_drains_queued_work_then_refuses() -> None:
    model = Model(gated=True)
    b = make(model, max_batch_size=1, max_wait_s=0.0)
    futs = [asyncio.ensure_future(b.submit(i, deadline_s=10)) for i in range(3)]
    await asyncio.wait_for(model.entered.wait(), 5)
    closing = asyncio.ensure_future(b.close(5))
    await asyncio.sleep(0)
    with pytest.raises(Draining):
        await b.submit(99, deadline_s=1)
    model.release.set()
    assert await asyncio.wait_for(closing, 5) is True
    assert [f.result()[0] for f in futs] == [("out", i) for i in range(3)]


async def test_metrics_hooks_see_batches_and_depth() -> None:
    sizes: list[int] = []
    depths: list[int] = []
    hooks = BatcherHooks(depth=depths.append, batch=lambda n, secs, waits: sizes.append(n))
    b = make(Model(), max_batch_size=3, max_wait_s=30, hooks=hooks)
    await asyncio.wait_for(asyncio.gather(*(b.submit(i, deadline_s=5) for i in range(3))), 5)
    assert sizes == [3]
    assert max(depths) == 3 and depths[-1] == 0
    await b.close(1)


async def test_queued_cost_cap_refuses_but_never_starves_a_lone_request() -> None:
    model = Model(gated=True)
    b = make(model, max_batch_size=1, max_wait_s=0.0, cost=lambda item: item, max_queued_cost=100)
    running = asyncio.ensure_future(b.submit(10, deadline_s=10))
    await asyncio.wait_for(model.entered.wait(), 5)
    huge = asyncio.ensure_future(b.submit(500, deadline_s=10))  # alone in the queue: accepted
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await b.submit(1, deadline_s=10)  # 500 + 1 > 100 while something waits
    model.release.set()
    await asyncio.wait_for(asyncio.gather(running, huge), 5)
    assert (await asyncio.wait_for(b.submit(60, deadline_s=10), 5))[0] == ("out", 60)
    await b.close(1)


async def test_an_exception_returned_for_one_item_fails_that_request_alone() -> None:
    """Old: one bad output (a non-finite image) failed every request of its batch."""

    async def run(items: list[object]) -> list[object]:
        return [ValueError(f"bad {i}") if i == 2 else ("out", i) for i in items]

    b = Batcher(run, key=lambda item: "k", max_batch_size=4, max_wait_s=30.0, queue_size=16)
    b.start()
    results = await asyncio.wait_for(
        asyncio.gather(*(b.submit(i, deadline_s=10) for i in range(4)), return_exceptions=True), 5
    )
    assert [r if isinstance(r, Exception) else r[0] for r in results][:2] == [("out", 0), ("out", 1)]
    assert isinstance(results[2], ValueError) and str(results[2]) == "bad 2"
    assert results[3][0] == ("out", 3)  # type: ignore[index]
    await b.close(1)
