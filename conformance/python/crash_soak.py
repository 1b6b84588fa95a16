#!/usr/bin/env python3
"""kill -9 crash rounds against the real ferrobus broker (RocksDB storage).

Used two ways:
  * imported by test_durability.py (crash_round and the message helpers);
  * run as a script by scripts/crash-soak:  crash_soak.py N [--seed S] [--keep]

One crash round:
  1. start a broker on a fresh data dir;
  2. two producer threads (one connection each) send unsettled messages with unique ids as fast as
     they can and record which ids the broker ACCEPTED (= fsynced);
  3. one consumer completes messages and records the ids whose completion is known to have
     reached the broker:
       mode "echo":  it sends an unsettled `accepted` and counts the id only once the broker's
                     settled disposition (sent after the removal is written) has come back; it keeps
                     running through the kill;
       mode "close": it accepts+settles each message (rcv-settle-mode first) and closes its
                     connection cleanly before the kill, so every accept it sent was processed;
  4. after a random 0.3-2 s, kill -9 the broker; restart it on the same data dir;
  5. drain the queue and check: every accepted id is back (at least once), no completed id is back,
     no body is corrupt, no id is unknown or duplicated, each producer's ids come back in order,
     sequence numbers grow, and a message sent after the restart gets a larger sequence number
     than any message seen before.
"""

import argparse
import collections
import hashlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from proton import Delivery, Message  # noqa: E402
from proton._exceptions import Timeout  # noqa: E402

from brokers import Broker, broker_bin  # noqa: E402
from helpers import connect  # noqa: E402

SEQ = "x-opt-sequence-number"


# --------------------------------------------------------------------------
# message bodies: id + deterministic payload + checksum
# --------------------------------------------------------------------------
def make_body(mid, min_len=0, max_len=600):
    h = hashlib.sha256(mid.encode()).hexdigest()
    n = min_len + int(h[:8], 16) % (max_len - min_len + 1)
    payload = (h * (n // len(h) + 1))[:n]
    check = hashlib.sha256(("%s|%s" % (mid, payload)).encode()).hexdigest()[:16]
    return "%s|%s|%s" % (mid, payload, check)


def body_problem(m, min_len=0, max_len=600):
    """None if m carries an intact body for the id in its properties, else a description."""
    props = m.properties or {}
    mid = props.get("id")
    if not isinstance(mid, str):
        return "no id property: properties=%r body=%.80r" % (props, m.body)
    if m.body != make_body(mid, min_len, max_len):
        return "id %s: corrupt body %.120r" % (mid, m.body)
    return None


def seq_of(m):
    return (m.annotations or {}).get(SEQ)


# --------------------------------------------------------------------------
# crash round participants
# --------------------------------------------------------------------------
class Producer(threading.Thread):
    """Pipelined unsettled sender on its own connection; runs until the connection dies or stop."""

    def __init__(self, broker, name, queue="q1", window=256):
        super().__init__(name="producer-" + name, daemon=True)
        self.broker, self.tag, self.queue, self.window = broker, name, queue, window
        self.stop_evt = threading.Event()
        self.ready = threading.Event()
        self.sent = 0               # ids tag-0000000 .. tag-(sent-1) were handed to the link
        self.accepted = []          # ids the broker accepted, in disposition order
        self.other = {}             # id -> remote state other than accepted
        self.error = None
        self.error_at = None
        self.broker_gone = False    # set after the kill: closing must not wait for the broker

    def mid(self, i):
        return "%s-%07d" % (self.tag, i)

    def run(self):
        conn = None
        outstanding = collections.deque()
        try:
            conn = connect(self.broker, timeout=10)
            link = conn.create_sender(self.queue).link
            self.ready.set()
            while not self.stop_evt.is_set():
                while len(outstanding) < self.window and link.credit > 0:
                    mid = self.mid(self.sent)
                    d = link.send(Message(body=make_body(mid), properties={"id": mid}))
                    self.sent += 1
                    outstanding.append((d, mid))
                conn.wait(lambda: bool(outstanding) and bool(outstanding[0][0].remote_state)
                          or (len(outstanding) < self.window and link.credit > 0),
                          timeout=10, msg="producer %s: no disposition" % self.tag)
                while outstanding and outstanding[0][0].remote_state:
                    self._record(*outstanding.popleft())
        except BaseException as e:  # the kill ends us with ConnectionException
            self.error, self.error_at = e, time.monotonic()
        finally:
            for d, mid in outstanding:  # dispositions that arrived out of order before the end
                if d.remote_state:
                    self._record(d, mid)
            close_quietly(conn, dead=self.error is not None or self.broker_gone)

    def _record(self, d, mid):
        if d.remote_state == Delivery.ACCEPTED:
            self.accepted.append(mid)
        else:
            self.other[mid] = (d.remote_state, d.remote.condition)
        d.settle()


class Consumer(threading.Thread):
    """Completes messages; `confirmed` holds the ids whose completion certainly reached the broker."""

    def __init__(self, broker, mode, queue="q1", credit=200):
        super().__init__(name="consumer", daemon=True)
        assert mode in ("echo", "close")
        self.broker, self.mode, self.queue, self.credit = broker, mode, queue, credit
        self.stop_evt = threading.Event()
        self.ready = threading.Event()
        self.received = []          # (id, seq, delivery_count)
        self.bad = []               # corrupt bodies seen before the crash
        self.accept_sent = set()    # ids we sent `accepted` for
        self.confirmed = set()      # ids whose completion the broker confirmed / processed
        self.not_accepted = {}      # id -> broker's echoed state when it was not `accepted`
        self.closed_cleanly = False
        self.error = None
        self.error_at = None
        self.broker_gone = False

    def run(self):
        conn = None
        pending = []
        try:
            conn = connect(self.broker, timeout=10)
            rcv = conn.create_receiver(self.queue, credit=self.credit)
            fetcher = rcv.fetcher
            self.ready.set()
            while not self.stop_evt.is_set():
                try:
                    conn.wait(lambda: fetcher.has_message or any(d.settled for d, _ in pending)
                              or self.stop_evt.is_set(), timeout=0.2)
                except Timeout:
                    continue
                while fetcher.has_message:
                    m = fetcher.pop()
                    d = fetcher.unsettled.popleft()
                    mid = (m.properties or {}).get("id")
                    self.received.append((mid, seq_of(m), m.delivery_count))
                    p = body_problem(m)
                    if p:
                        self.bad.append(p)
                    d.update(Delivery.ACCEPTED)
                    self.accept_sent.add(mid)
                    if self.mode == "close":
                        d.settle()  # rcv-settle-mode first: no answer from the broker
                    else:
                        pending.append((d, mid))  # unsettled: the broker echoes it settled
                if pending:
                    keep = []
                    for d, mid in pending:
                        if d.settled:  # settled by the broker (remote)
                            if d.remote_state == Delivery.ACCEPTED:
                                self.confirmed.add(mid)
                            else:
                                self.not_accepted[mid] = d.remote_state
                            d.settle()
                        else:
                            keep.append((d, mid))
                    pending = keep
            if self.mode == "close":
                # close() waits for the broker's close: every accept sent before it was processed
                conn.close()
                conn = None
                self.closed_cleanly = True
                self.confirmed = set(self.accept_sent)
        except BaseException as e:
            self.error, self.error_at = e, time.monotonic()
        finally:
            close_quietly(conn, dead=self.error is not None or self.broker_gone)


def close_quietly(conn, dead=False):
    """Close a BlockingConnection, ignoring errors. dead=True: the broker is gone, so do not wait the
    connection's whole timeout for a close frame that cannot come."""
    if conn is None:
        return
    if dead or conn.disconnected:
        conn.timeout = 0.2
    try:
        conn.close()
    except BaseException:
        pass


def drain(broker, queue="q1", credit=2000, idle=1.5, timeout=60):
    """Receive (and accept) everything on queue until nothing arrives for `idle` seconds.
    Returns the messages in arrival order."""
    out = []
    c = connect(broker, timeout=20)
    try:
        rcv = c.create_receiver(queue, credit=credit)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = rcv.receive(timeout=idle)
            except Timeout:
                break
            rcv.accept()
            out.append(m)
        else:
            raise AssertionError("drain of %s did not finish within %ss (%d messages)" % (queue, timeout, len(out)))
    finally:
        c.close()
    return out


def send_one(broker, queue, mid, timeout=20):
    """One unsettled message on a new connection; returns (remote_state, condition)."""
    c = connect(broker, timeout=timeout)
    try:
        snd = c.create_sender(queue)
        d = snd.link.send(Message(body=make_body(mid), properties={"id": mid}))
        c.wait(lambda: d.remote_state, timeout=timeout, msg="disposition for %s" % mid)
        state, cond = d.remote_state, d.remote.condition
        d.settle()
        return state, cond
    finally:
        c.close()


def _few(xs, n=10):
    xs = sorted(xs)
    return "%d: %s%s" % (len(xs), xs[:n], " ..." if len(xs) > n else "")


def crash_round(broker, rng, mode="echo", queue="q1", min_delay=0.3, max_delay=2.0):
    """One crash round on a started brokers.Broker (RocksDB storage) with a fresh data dir. Raises
    AssertionError with everything that went wrong; returns a dict of counts."""
    delay = rng.uniform(min_delay, max_delay)
    producers = [Producer(broker, name, queue) for name in ("pa", "pb")]
    consumer = Consumer(broker, mode, queue)
    for t in producers + [consumer]:
        t.start()
    for t in producers + [consumer]:
        if not t.ready.wait(15):
            raise AssertionError("%s did not attach within 15 s (error: %r)" % (t.name, t.error))
    time.sleep(delay)

    problems = []
    if mode == "close":
        consumer.stop_evt.set()
        consumer.join(30)
        if not consumer.closed_cleanly:
            problems.append("consumer did not close cleanly before the kill: %r" % (consumer.error,))
    kill_at = time.monotonic()
    for t in producers + [consumer]:
        if t.error is not None and t.error_at < kill_at and not (t is consumer and consumer.closed_cleanly):
            problems.append("%s failed before the kill: %r" % (t.name, t.error))
    broker.kill9()
    for t in producers + [consumer]:
        t.broker_gone = True
    for t in producers + [consumer]:
        t.join(5)  # they notice the dead connection themselves (and read what arrived before it died)
        if t.is_alive():
            t.stop_evt.set()
            t.join(25)
        if t.is_alive():
            problems.append("%s still running 30 s after the kill" % t.name)

    accepted = set()
    sent = set()
    for p in producers:
        accepted.update(p.accepted)
        sent.update(p.mid(i) for i in range(p.sent))
    confirmed = set(consumer.confirmed)
    seen_seqs = [s for _, s, _ in consumer.received if s is not None]

    t0 = time.monotonic()
    broker.restart()
    restart_s = time.monotonic() - t0
    drained = drain(broker, queue, idle=1.0)  # nobody else is sending

    ids = [(m.properties or {}).get("id") for m in drained]
    got = set(ids)
    counts = collections.Counter(ids)
    lost = accepted - got - consumer.accept_sent  # the consumer completed (or tried to complete) those
    resurrected = confirmed & got
    dups = {i: n for i, n in counts.items() if n > 1}
    unknown = got - sent
    corrupt = [p for p in (body_problem(m) for m in drained) if p]
    corrupt += ["before the crash: " + p for p in consumer.bad]
    seqs = [seq_of(m) for m in drained]
    if any(not isinstance(s, int) for s in seqs):
        problems.append("drained messages without an integer %s: %r" % (SEQ, [s for s in seqs if not isinstance(s, int)][:5]))
    else:
        backwards = [(a, b) for a, b in zip(seqs, seqs[1:]) if b <= a]
        if backwards:
            problems.append("sequence numbers do not grow in drain order (first of %d: %r)" % (len(backwards), backwards[:5]))
        if seqs and min(seqs) < 1:
            problems.append("sequence number below 1: %d" % min(seqs))
    for p in producers:
        mine = [int(i.rsplit("-", 1)[1]) for i in ids if isinstance(i, str) and i.startswith(p.tag + "-")]
        out_of_order = [(a, b) for a, b in zip(mine, mine[1:]) if b <= a]
        if out_of_order:
            problems.append("producer %s's messages drained out of order (first of %d: %r)"
                            % (p.tag, len(out_of_order), out_of_order[:5]))
    if lost:
        problems.append("LOST accepted ids " + _few(lost))
    if resurrected:
        problems.append("completed ids came back " + _few(resurrected))
    if dups:
        problems.append("ids drained more than once: %r" % dict(list(dups.items())[:10]))
    if unknown:
        problems.append("ids nobody sent: " + _few(unknown))
    if corrupt:
        problems.append("corrupt bodies (%d): %r" % (len(corrupt), corrupt[:5]))
    if not accepted:
        problems.append("no message was accepted before the kill (the round tested nothing)")
    if not consumer.received:
        problems.append("the consumer received nothing before the kill (the round tested nothing)")
    for p in producers:
        if p.other:
            problems.append("producer %s: non-accepted outcomes %r" % (p.tag, list(p.other.items())[:5]))
    if consumer.not_accepted:
        problems.append("consumer: broker echoed a state other than accepted: %r" % list(consumer.not_accepted.items())[:5])

    # sequence numbers survive the crash: a new message gets a larger one than anything seen
    new_seq = None
    state, cond = send_one(broker, queue, "after-crash")
    if state != Delivery.ACCEPTED:
        problems.append("message after restart not accepted: %r %r" % (state, cond))
    else:
        after = drain(broker, queue, idle=0.5)
        if [(m.properties or {}).get("id") for m in after] != ["after-crash"]:
            problems.append("after the drain expected only 'after-crash', got %r"
                            % [(m.properties or {}).get("id") for m in after][:10])
        else:
            new_seq = seq_of(after[0])
            top = max(seen_seqs + [s for s in seqs if isinstance(s, int)], default=0)
            if not isinstance(new_seq, int) or new_seq <= top:
                problems.append("sequence number after the crash %r is not above the highest seen before (%d)"
                                % (new_seq, top))

    stats = {
        "mode": mode, "delay": round(delay, 2), "sent": len(sent), "accepted": len(accepted),
        "completed": len(confirmed), "consumer_received": len(consumer.received),
        "accept_unconfirmed": len(consumer.accept_sent - confirmed), "drained": len(drained),
        "in_flight_kept": len((got - accepted) & sent), "restart_s": round(restart_s, 2),
        "redelivered": sum(1 for m in drained if (m.delivery_count or 0) > 0), "new_seq": new_seq,
    }
    if problems:
        raise AssertionError("crash round %r failed:\n  - %s" % (stats, "\n  - ".join(problems)))
    return stats


# --------------------------------------------------------------------------
# script
# --------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description="kill -9 crash rounds against ferrobus (RocksDB storage)")
    ap.add_argument("rounds", type=int, nargs="?", default=10)
    ap.add_argument("--seed", type=int, default=None, help="base seed (default: random)")
    ap.add_argument("--keep", action="store_true", help="keep the data dirs of failed rounds")
    ap.add_argument("--mode", choices=["echo", "close", "both"], default="both",
                    help="consumer mode (both: alternate per round)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    exe = broker_bin()
    print("crash-soak: %d rounds, seed %d, broker %s" % (args.rounds, seed, exe), flush=True)
    passed = failed = 0
    for r in range(args.rounds):
        mode = args.mode if args.mode != "both" else ("echo", "close")[r % 2]
        rng = random.Random(seed + r)
        work = tempfile.mkdtemp(prefix="ferrobus-crash-")
        b = None
        t0 = time.monotonic()
        try:
            b = Broker(os.path.join(work, "broker"), storage="rocksdb").start()
            stats = crash_round(b, rng, mode=mode)
            problems = b.teardown_problems()  # SIGTERM must end it with 0; no panic in any run
            if problems:
                raise AssertionError("after the round:\n" + "\n".join(problems))
            passed += 1
            print("round %d/%d PASS %.1fs %s" % (r + 1, args.rounds, time.monotonic() - t0,
                                                " ".join("%s=%s" % kv for kv in stats.items())), flush=True)
            shutil.rmtree(work, ignore_errors=True)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # includes pytest's Failed from Broker.start
            failed += 1
            text = str(e)
            print("round %d/%d FAIL %.1fs (seed %d) %s" % (r + 1, args.rounds, time.monotonic() - t0, seed + r,
                                                           text if len(text) < 4000 else text[:4000] + " ..."),
                  flush=True)
            if b is not None:
                if b.alive():
                    b.stop()
                tail = b.stderr_text()[-3000:]
                if tail and "stderr tail" not in text:
                    print("  broker stderr tail:\n" + "\n".join("    " + ln for ln in tail.splitlines()), flush=True)
            if args.keep:
                print("  kept %s" % work, flush=True)
            else:
                shutil.rmtree(work, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
