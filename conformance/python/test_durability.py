"""Durability with the RocksDB store: restarts (SIGTERM and kill -9), crash rounds, a failing disk,
a large backlog. Every test starts its own broker on a fresh data dir with `[storage] kind =
"rocksdb"` (the `durable` fixture) and restarts it on the same data dir.

What is checked (from the storage design):
* a producer's unsettled transfer is `accepted` only once it is fsynced: accepted = survives kill -9;
* a consumer's completion is final once applied (the broker echoes an unsettled `accepted` settled
  after the removal is written; a clean connection close means all earlier accepts were processed);
* x-opt-sequence-number starts at 1 and only grows, also across restarts;
* locks are not persisted: a message handed out before the broker stopped comes back with header
  delivery-count + 1.
"""

import collections
import functools
import os
import random
import threading
import time

import pytest
from proton import Delivery, Message
from proton.utils import LinkDetached

from crash_soak import body_problem, close_quietly, crash_round, drain, make_body, send_one, seq_of
from helpers import collect, connect, connection, expect_empty, pump, send_many

QUEUE = "q1"


@pytest.fixture
def durable(start_broker):
    """Factory: durable(amqp=..., env=...) -> a started broker with `[storage] kind = "rocksdb"` on a
    fresh data dir (conftest's teardown: SIGTERM must end it with 0, no run may have panicked)."""
    return functools.partial(start_broker, storage="rocksdb")


def ids_of(msgs):
    return [(m.properties or {}).get("id") for m in msgs]


def msg(mid, **kw):
    return Message(body=make_body(mid, **kw), properties={"id": mid})


def assert_intact(msgs, **kw):
    bad = [p for p in (body_problem(m, **kw) for m in msgs) if p]
    assert not bad, "corrupt messages (%d): %r" % (len(bad), bad[:5])


def assert_all_accepted(deliveries):
    states = collections.Counter(d.remote_state for d in deliveries)
    assert states == {Delivery.ACCEPTED: len(deliveries)}, "broker outcomes: %r" % dict(states)


def held_receiver(conn, n):
    """A receiver with exactly n credit and no automatic top-up: the broker hands out n messages."""
    rcv = conn.create_receiver(QUEUE, credit=0)
    rcv.link.flow(n)
    return rcv


def send_and_hold_two(b, ids):
    """Sends the messages `ids` (all must be accepted), then a new connection takes the first two
    and holds them unsettled; returns that connection."""
    with connection(b) as c:
        assert_all_accepted(send_many(c, c.create_sender(QUEUE), [msg(i) for i in ids]))
    c = connect(b)
    rcv = held_receiver(c, 2)
    assert ids_of(collect(c, rcv, 2)) == ids[:2]
    pump(c, 0.3)
    return c


# ---------------------------------------------------------------------------
# a. SIGTERM restart keeps messages, order, bodies and sequence numbers
# ---------------------------------------------------------------------------
def test_restart_keeps_500_messages_in_order_and_sequence_numbers_grow(durable):
    b = durable()
    ids = ["a-%04d" % i for i in range(500)]
    with connection(b) as c:
        snd = c.create_sender(QUEUE)
        assert_all_accepted(send_many(c, snd, [msg(i) for i in ids]))
    assert b.stop() == 0, "exit code on SIGTERM"

    b.restart()
    # a message sent after the restart, while the 500 are still stored, goes behind them
    state, cond = send_one(b, QUEUE, "a-after-restart-1")
    assert state == Delivery.ACCEPTED, (state, cond)
    with connection(b) as c:
        rcv = c.create_receiver(QUEUE, credit=600)
        got = []
        for _ in range(501):
            got.append(rcv.receive(timeout=10))
            rcv.accept()
        expect_empty(rcv, 0.5)
    assert ids_of(got) == ids + ["a-after-restart-1"], "order after restart (first 10 got %r)" % ids_of(got)[:10]
    assert_intact(got)
    counts = collections.Counter(m.delivery_count for m in got)
    assert counts == {0: 501}, "never handed out before, so delivery-count must be 0: %r" % dict(counts)
    seqs = [seq_of(m) for m in got]
    assert all(isinstance(s, int) for s in seqs), "x-opt-sequence-number missing: %r" % seqs[:5]
    assert seqs[0] == 1, "the first message of a fresh store must have sequence number 1, got %r" % seqs[0]
    back = [(a, x) for a, x in zip(seqs, seqs[1:]) if x <= a]
    assert not back, "sequence numbers must grow (first of %d: %r)" % (len(back), back[:5])

    # every message is now completed; the sequence must still continue after the next restart
    assert b.stop() == 0, "exit code on SIGTERM"
    b.restart()
    with connection(b) as c:
        expect_empty(c.create_receiver(QUEUE, credit=10), 1.0)
    state, cond = send_one(b, QUEUE, "a-after-restart-2")
    assert state == Delivery.ACCEPTED, (state, cond)
    after = drain(b, QUEUE, idle=1.0)
    assert ids_of(after) == ["a-after-restart-2"]
    assert_intact(after)
    assert seq_of(after[0]) > max(seqs), \
        "sequence number after a restart with an empty queue: %r, highest before: %d" % (seq_of(after[0]), max(seqs))


# ---------------------------------------------------------------------------
# b. completions are final; locks are not persisted (kill -9)
# ---------------------------------------------------------------------------
def test_completed_stay_gone_and_locked_come_back_with_delivery_count_plus_1_after_kill9(durable):
    b = durable()
    ids = ["b-%02d" % i for i in range(20)]
    with connection(b) as c:
        assert_all_accepted(send_many(c, c.create_sender(QUEUE), [msg(i) for i in ids]))

    # complete b-00..b-07; the clean close means every accept was processed
    with connection(b) as c:
        rcv = held_receiver(c, 8)
        done = collect(c, rcv, 8)
        for _ in done:
            rcv.accept()
    assert ids_of(done) == ids[:8]

    # hold b-08..b-12 (peek-lock, never settled) and kill -9
    c = connect(b)
    rcv = held_receiver(c, 5)
    held = collect(c, rcv, 5)
    assert ids_of(held) == ids[8:13]
    assert [m.delivery_count for m in held] == [0] * 5
    pump(c, 0.3)  # the hand-out mark is written in the background; give it a moment
    b.kill9()
    close_quietly(c, dead=True)

    b.restart()
    c = connect(b)
    rcv = held_receiver(c, 12)
    round2 = collect(c, rcv, 12)
    rcv.link.flow(5)
    pump(c, 1.0)
    extra = ids_of([rcv.fetcher.pop() for _ in range(rcv.fetcher.has_message)])
    assert not extra, "completed (or unknown) messages came back after kill -9: %r" % extra
    assert ids_of(round2) == ids[8:], "after kill -9: %r" % ids_of(round2)
    assert_intact(round2)
    assert [m.delivery_count for m in round2] == [1] * 5 + [0] * 7, \
        "delivery-counts after kill -9 (held ones +1, never handed out 0): %r" % \
        list(zip(ids_of(round2), [m.delivery_count for m in round2]))
    # hold all twelve again (nothing settled) and kill -9 once more: +1 again
    pump(c, 0.3)
    b.kill9()
    close_quietly(c, dead=True)

    b.restart()
    round3 = drain(b, QUEUE, idle=1.0)  # accepts everything
    assert ids_of(round3) == ids[8:], "after the second kill -9: %r" % ids_of(round3)
    assert_intact(round3)
    assert [m.delivery_count for m in round3] == [2] * 5 + [1] * 7, \
        "delivery-counts after the second kill -9: %r" % list(zip(ids_of(round3), [m.delivery_count for m in round3]))

    # and the completions of round 3 stay final across a SIGTERM restart
    assert b.stop() == 0
    b.restart()
    with connection(b) as c:
        expect_empty(c.create_receiver(QUEUE, credit=10), 1.0)


def test_held_message_counted_once_when_restarted_again_without_delivery(durable):
    """+1 is for a delivery that was locked when the broker stopped, not for every later restart."""
    b = durable()
    ids = ["b2-%d" % i for i in range(6)]
    c = send_and_hold_two(b, ids)
    b.kill9()
    close_quietly(c, dead=True)
    b.restart()  # b2-0, b2-1 -> delivery-count 1; nothing is handed out in this run
    assert b.stop() == 0
    b.restart()
    got = drain(b, QUEUE, idle=1.0)
    assert ids_of(got) == ids
    assert [m.delivery_count for m in got] == [1, 1, 0, 0, 0, 0], \
        "delivery-counts after kill -9 + restart + SIGTERM restart (held once): %r" % \
        list(zip(ids_of(got), [m.delivery_count for m in got]))


def test_message_held_during_sigterm_comes_back_with_delivery_count_plus_1(durable):
    """A consumer still holds two messages when the broker is stopped with SIGTERM: each comes back
    with delivery-count 1 (one delivery), whichever of shutdown and start-up accounts for it."""
    b = durable()
    ids = ["b3-%d" % i for i in range(4)]
    c = send_and_hold_two(b, ids)
    assert b.stop() == 0, "exit code on SIGTERM with a consumer holding locks"
    close_quietly(c, dead=True)
    b.restart()
    got = drain(b, QUEUE, idle=1.0)
    assert ids_of(got) == ids
    assert [m.delivery_count for m in got] == [1, 1, 0, 0], \
        "delivery-counts after SIGTERM with 2 held: %r" % list(zip(ids_of(got), [m.delivery_count for m in got]))


# ---------------------------------------------------------------------------
# c. kill -9 under load: accepted messages survive, completed ones stay gone
# ---------------------------------------------------------------------------
CRASH_SEED = int(os.environ.get("FERROBUS_CRASH_SEED", random.randrange(1 << 30)))


@pytest.mark.parametrize("round_no", range(5))
def test_crash_kill9_under_load(durable, round_no):
    # even rounds: the consumer counts completions the broker echoed settled and runs into the kill;
    # odd rounds: it closes cleanly just before the kill and counts every accept it sent
    mode = ("echo", "close")[round_no % 2]
    seed = CRASH_SEED + round_no
    b = durable()
    try:
        stats = crash_round(b, random.Random(seed), mode=mode, queue=QUEUE)
    except AssertionError as e:
        raise AssertionError("seed %d (FERROBUS_CRASH_SEED=%d): %s" % (seed, CRASH_SEED, e)) from None
    print("crash round %d: %r" % (round_no, stats))


# ---------------------------------------------------------------------------
# d. a failing disk refuses producers with amqp:resource-limit-exceeded, nothing else breaks
# ---------------------------------------------------------------------------
FAIL_AFTER = 200_000


def kib(mid):
    return make_body(mid, min_len=1024, max_len=1024)


def send_until_refused(c, snd, prefix, limit=1000):
    """Sends 1 KiB messages one at a time until one is not accepted. Returns the accepted ids and
    the refusal (state or "link detached", condition, description, id), or None."""
    accepted = []
    for i in range(limit):
        mid = "%s-%04d" % (prefix, i)
        d = snd.link.send(Message(body=kib(mid), properties={"id": mid}))
        try:
            c.wait(lambda: d.remote_state, timeout=20, msg="disposition for %s" % mid)
        except LinkDetached as e:
            return accepted, ("link detached", e.condition, str(e), mid)
        if d.remote_state == Delivery.ACCEPTED:
            accepted.append(mid)
            d.settle()
            continue
        cond = d.remote.condition
        return accepted, (d.remote_state, cond and cond.name, cond and cond.description, mid)
    return accepted, None


def assert_holds_exactly(b, accepted):
    """The queue holds the accepted messages, in order and intact, and nothing else."""
    with connection(b) as c:
        rcv = held_receiver(c, len(accepted) + 5)
        got = collect(c, rcv, len(accepted), timeout=20)
        pump(c, 0.5)
        extra = ids_of([rcv.fetcher.pop() for _ in range(rcv.fetcher.has_message)])
    assert ids_of(got) == accepted, "accepted messages (first 5): %r" % ids_of(got)[:5]
    assert_intact(got, min_len=1024, max_len=1024)
    assert not extra, "messages beyond the accepted ones: %r" % extra


def test_write_failure_refuses_with_resource_limit_exceeded_and_broker_stays_up(durable):
    b = durable(env={"FERROBUS_TEST_FAIL_WRITES_AFTER_BYTES": str(FAIL_AFTER)}, args=["--enable-test-faults"])
    c = connect(b)
    try:
        # up to 1000 KiB: five times the budget
        accepted, refusal = send_until_refused(c, c.create_sender(QUEUE), "d")
    finally:
        try:
            c.close()
        except Exception:
            pass
    assert refusal is not None, "1000 messages of 1 KiB accepted with a %d-byte write budget" % FAIL_AFTER
    kind, cond = refusal[0], refusal[1]
    assert kind in (Delivery.REJECTED, "link detached"), "refusal: %r" % (refusal,)
    assert cond == "amqp:resource-limit-exceeded", "refusal: %r" % (refusal,)
    # every accepted message wrote its 1 KiB body: at most 195 fit; far fewer means a refusal too early
    assert 100 <= len(accepted) <= FAIL_AFTER // 1024, "%d accepted before the refusal" % len(accepted)
    print("write failure: %d x 1 KiB accepted, then %r" % (len(accepted), refusal))

    assert b.alive(), "broker exited after the write failure"
    status, _, body = b.http_get("/health")
    assert (status, body.strip()) == (200, b"ok"), "/health after the write failure: %r %r" % (status, body)

    # what was accepted is still there, in order, intact; the refused message is not
    assert_holds_exactly(b, accepted)

    # a new connection still works: it can receive, and a send gets a definite answer
    with connection(b) as c:
        rcv = held_receiver(c, 1)
        first = collect(c, rcv, 1, timeout=10)
        assert ids_of(first) == [accepted[0]]
        assert_intact(first, min_len=1024, max_len=1024)
        d = c.create_sender(QUEUE).link.send(Message(body=kib("d-late"), properties={"id": "d-late"}))
        c.wait(lambda: d.remote_state, timeout=20, msg="disposition for d-late")
        cond = d.remote.condition
        assert d.remote_state == Delivery.ACCEPTED or (
            d.remote_state == Delivery.REJECTED and cond and cond.name == "amqp:resource-limit-exceeded"), \
            "send on a new connection after the failure: %r %r" % (d.remote_state, cond)
    assert b.alive()
    assert b.http_get("/health")[0] == 200


def test_a_failed_sync_refuses_every_write_turns_health_503_and_a_restart_recovers(durable):
    """After a failed journal sync the kernel may have dropped unsynced pages: the broker must not
    acknowledge anything more, must say so on /health and /ready, and a restart must bring back
    everything it had accepted."""
    b = durable(env={"FERROBUS_TEST_FAIL_SYNCS_AFTER_BYTES": str(FAIL_AFTER)}, args=["--enable-test-faults"])
    with connection(b) as c:
        snd = c.create_sender(QUEUE)
        accepted, refusal = send_until_refused(c, snd, "s")
        assert refusal is not None, "1000 x 1 KiB accepted with a %d-byte budget" % FAIL_AFTER
        assert refusal[0] == Delivery.REJECTED and refusal[1] == "amqp:internal-error", refusal
        assert 100 <= len(accepted) <= FAIL_AFTER // 1024, "%d accepted" % len(accepted)
        # and so is every later write, even a small one
        d = snd.link.send(Message(body="small", properties={"id": "s-late"}))
        c.wait(lambda: d.remote_state, timeout=20, msg="disposition for s-late")
        assert d.remote_state == Delivery.REJECTED, d.remote_state
    for probe in ("/health", "/ready"):
        status, _, body = b.http_get(probe)
        assert status == 503 and body.startswith(b"storage failed:"), (probe, status, body)
    assert b.alive()
    assert "every write fails until the broker is restarted" in b.stderr_text()

    b.env = {}
    assert b.stop() == 0
    b.restart()
    assert b.http_get("/health")[0] == 200
    assert_holds_exactly(b, accepted)


# ---------------------------------------------------------------------------
# e. a 50,000-message backlog: bounded memory, fast restart, in-order drain
# ---------------------------------------------------------------------------
N_BACKLOG = 50_000
RSS_LIMIT_KB = 200 * 1024


class RssSampler(threading.Thread):
    def __init__(self, broker, every=0.05):
        super().__init__(daemon=True)
        self.broker, self.every = broker, every
        self.stop_evt = threading.Event()
        self.max_kb = 0
        self.samples = 0

    def run(self):
        while not self.stop_evt.is_set():
            try:
                if self.broker.alive():
                    self.max_kb = max(self.max_kb, self.broker.status_kb("VmRSS"))
                    self.samples += 1
            except (OSError, KeyError, ValueError):
                pass
            self.stop_evt.wait(self.every)

    def stop(self):
        self.stop_evt.set()
        self.join(5)
        return self.max_kb


def backlog_msg(i):
    mid = "e-%06d" % i
    return Message(body=kib(mid), properties={"id": mid})


@pytest.mark.timeout(300)
def test_backlog_50000_bounded_rss_fast_restart_in_order_drain(durable):
    b = durable()
    sampler = RssSampler(b)
    sampler.start()
    with connection(b) as c:
        link = c.create_sender(QUEUE).link
        i = 0
        while i < N_BACKLOG:
            c.wait(lambda: link.credit > 0, timeout=30, msg="credit after %d messages" % i)
            while link.credit > 0 and i < N_BACKLOG:
                link.send(backlog_msg(i)).settle()  # pre-settled
                i += 1
        # the count is confirmed by an unsettled message behind them on the same link
        last = link.send(Message(body=kib("e-final"), properties={"id": "e-final"}))
        c.wait(lambda: last.remote_state, timeout=120, msg="disposition for e-final")
        assert last.remote_state == Delivery.ACCEPTED, (last.remote_state, last.remote.condition)
        last.settle()
    time.sleep(1.0)  # let the broker settle down (the sampler keeps sampling)
    loaded_kb = b.status_kb("VmRSS")
    max_loaded_kb = max(sampler.max_kb, loaded_kb)
    assert max_loaded_kb < RSS_LIMIT_KB, \
        "broker RSS with %d x 1 KiB stored: max %d kB, now %d kB (limit %d kB)" % (
            N_BACKLOG, max_loaded_kb, loaded_kb, RSS_LIMIT_KB)

    assert b.stop() == 0
    b.restart()
    assert b.ready_seconds < 10, "READY %.1f s after the restart with a %d-message backlog" % (b.ready_seconds, N_BACKLOG)

    want = ["e-%06d" % i for i in range(N_BACKLOG)] + ["e-final"]
    got_ids, bad = [], []
    with connection(b) as c:
        rcv = c.create_receiver(QUEUE, credit=5000)
        first = rcv.receive(timeout=20)
        rcv.accept()
        got_ids.append(ids_of([first])[0])
        assert got_ids[0] == want[0], "first message after the restart: %r" % got_ids[0]
        for _ in range(len(want) - 1):
            m = rcv.receive(timeout=20)
            rcv.accept()
            mid = (m.properties or {}).get("id")
            got_ids.append(mid)
            if m.body != kib(mid or ""):
                bad.append(mid)
        expect_empty(rcv, 0.5)
    max_kb = sampler.stop()
    assert got_ids[-1] == "e-final"
    assert got_ids == want, "drain order differs (first mismatch at %d)" % next(
        (k for k, (x, y) in enumerate(zip(got_ids, want)) if x != y), min(len(got_ids), len(want)))
    assert not bad, "corrupt bodies (%d): %r" % (len(bad), bad[:5])
    print("backlog: RSS max %d kB while loading (VmRSS %d kB after), %d kB over the whole test; "
          "READY %.2f s after the restart" % (max_loaded_kb, loaded_kb, max_kb, b.ready_seconds))
    assert max_kb < RSS_LIMIT_KB, "broker RSS peaked at %d kB over the test (limit %d kB, %d samples)" % (
        max_kb, RSS_LIMIT_KB, sampler.samples)
