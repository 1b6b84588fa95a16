"""Topics, subscriptions and filter rules, driven by the official Python SDK (azure-servicebus
7.15.0) and, for the crash test, python-qpid-proton.

One broker serves the tests that do not restart it (`topics` below: topic `orders` with
subscriptions `all` (no rules: $Default), `red` (SQL), `vip` (correlation with a property),
`blue` (correlation on the label)); each test uses its own topic so their messages never meet.
Tests that restart or kill the broker start their own.
"""

import datetime
import json
import subprocess
import threading
import time
import uuid

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import ServiceBusError
from proton import Delivery, Message

from brokers import Broker
from helpers import connect
from sdk_helpers import HANDLER_KW, MGMT_TIMEOUT, app_props, body_of, receive_n, sb_client

SEND_TIMEOUT = 20
UTC = datetime.timezone.utc

SUBSCRIPTIONS = """
[[topics.subscriptions]]
name = "all"

[[topics.subscriptions]]
name = "red"
[[topics.subscriptions.rules]]
name = "red-and-big"
sql = "color = 'red' AND amount > 100"

[[topics.subscriptions]]
name = "vip"
[[topics.subscriptions.rules]]
name = "gold"
properties = { tier = "gold" }

[[topics.subscriptions]]
name = "blue"
lock_duration_ms = 5000
max_delivery_count = 2
[[topics.subscriptions.rules]]
name = "label"
label = "blue"
"""


def topics_toml(*names):
    """Each topic with the same four subscriptions."""
    return "".join('\n[[topics]]\nname = "%s"\n%s' % (n, SUBSCRIPTIONS) for n in names)


TOPICS = ["fanout", "dlq", "sched", "peek", "refuse"]


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("topics"), extra_toml=topics_toml(*TOPICS)).start()
    yield b
    problems = b.teardown_problems()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="module")
def client(topics):
    c = sb_client(topics)
    yield c
    c.close()


def topic_sender(client, topic):
    return client.get_topic_sender(topic, **HANDLER_KW)


def sub_receiver(client, topic, sub, **kw):
    for k, v in HANDLER_KW.items():
        kw.setdefault(k, v)
    return client.get_subscription_receiver(topic, sub, **kw)


def order(n, color, amount, tier=None, subject=None):
    props = {"n": n, "color": color, "amount": amount}
    if tier:
        props["tier"] = tier
    return ServiceBusMessage("order-%d" % n, application_properties=props, subject=subject)


def received_numbers(client, topic, sub, expect, **kw):
    """Receives `expect` messages from a subscription (and checks nothing more comes), completes
    them, and returns their `n` properties and sequence numbers."""
    with sub_receiver(client, topic, sub, **kw) as r:
        got = receive_n(r, expect, timeout=10)
        extra = r.receive_messages(max_message_count=10, max_wait_time=1)
        for m in got + extra:
            r.complete_message(m)
    assert len(extra) == 0, "unexpected in %s: %r" % (sub, [app_props(m) for m in extra])
    return [app_props(m)["n"] for m in got], [m.sequence_number for m in got]


def test_each_subscription_gets_what_its_rules_select(client):
    msgs = [
        order(1, "red", 500),
        order(2, "red", 50),
        order(3, "green", 500, tier="gold"),
        order(4, "red", 101, tier="gold", subject="blue"),
        order(5, "green", 1, subject="blue"),
    ]
    with topic_sender(client, "fanout") as s:
        s.send_messages(msgs, timeout=SEND_TIMEOUT)
    all_n, all_seq = received_numbers(client, "fanout", "all", 5)
    assert all_n == [1, 2, 3, 4, 5]
    # each subscription numbers its own messages from 1
    assert all_seq == [1, 2, 3, 4, 5]
    red_n, red_seq = received_numbers(client, "fanout", "red", 2)
    assert red_n == [1, 4]
    assert red_seq == [1, 2]
    assert received_numbers(client, "fanout", "vip", 2)[0] == [3, 4]
    assert received_numbers(client, "fanout", "blue", 2)[0] == [4, 5]


def test_the_body_and_properties_arrive_unchanged_in_every_copy(client):
    body = "payload-" + uuid.uuid4().hex
    m = ServiceBusMessage(body, application_properties={"color": "red", "amount": 1000, "n": 9},
                          message_id="mid-9", correlation_id="corr-9", content_type="text/plain")
    with topic_sender(client, "fanout") as s:
        s.send_messages(m, timeout=SEND_TIMEOUT)
    for sub in ("all", "red"):
        with sub_receiver(client, "fanout", sub) as r:
            got = receive_n(r, 1)
            assert len(got) == 1, sub
            g = got[0]
            assert body_of(g) == body.encode()
            assert (g.message_id, g.correlation_id, g.content_type) == ("mid-9", "corr-9", "text/plain")
            assert app_props(g)["amount"] == 1000
            r.complete_message(g)


def test_subscription_dead_letter_queue(client):
    with topic_sender(client, "dlq") as s:
        s.send_messages(order(1, "red", 500), timeout=SEND_TIMEOUT)
    with sub_receiver(client, "dlq", "red") as r:
        m = receive_n(r, 1)[0]
        r.dead_letter_message(m, reason="bad order", error_description="amount too high")
    with sub_receiver(client, "dlq", "red", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as r:
        got = receive_n(r, 1)
        assert len(got) == 1
        assert got[0].dead_letter_reason == "bad order"
        assert got[0].dead_letter_error_description == "amount too high"
        r.complete_message(got[0])
    # the other subscriptions' copies are untouched by it
    assert received_numbers(client, "dlq", "all", 1)[0] == [1]


def test_max_delivery_count_dead_letters_in_the_subscription(client):
    with topic_sender(client, "dlq") as s:
        s.send_messages(order(2, "blue", 1, subject="blue"), timeout=SEND_TIMEOUT)
    with sub_receiver(client, "dlq", "blue") as r:
        for _ in range(2):
            m = receive_n(r, 1)[0]
            r.abandon_message(m)
    with sub_receiver(client, "dlq", "blue", sub_queue=ServiceBusSubQueue.DEAD_LETTER) as r:
        got = receive_n(r, 1)
        assert len(got) == 1 and got[0].dead_letter_reason == "MaxDeliveryCountExceeded"
        r.complete_message(got[0])
    received_numbers(client, "dlq", "all", 1)


def test_schedule_and_cancel_on_the_topic(client):
    later = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
    soon = datetime.datetime.now(UTC) + datetime.timedelta(seconds=2)
    with topic_sender(client, "sched") as s:
        cancelled = s.schedule_messages(order(1, "red", 500), later, timeout=MGMT_TIMEOUT)
        kept = s.schedule_messages(order(2, "red", 500), soon, timeout=MGMT_TIMEOUT)
        assert len(cancelled) == 1 and len(kept) == 1
        s.cancel_scheduled_messages(cancelled, timeout=MGMT_TIMEOUT)
    # only the second arrives, in both subscriptions that select it, once its time comes
    with sub_receiver(client, "sched", "red") as r:
        peeked = r.peek_messages(max_message_count=10, timeout=MGMT_TIMEOUT)
        assert [app_props(m)["n"] for m in peeked] == [2], "scheduled copy visible to peek"
    t0 = time.monotonic()
    red_n, _ = received_numbers(client, "sched", "red", 1)
    assert red_n == [2]
    assert time.monotonic() - t0 > 0.5, "a scheduled message arrived before its time"
    assert received_numbers(client, "sched", "all", 1)[0] == [2]


def test_peek_on_a_subscription(client):
    with topic_sender(client, "peek") as s:
        s.send_messages([order(i, "red", 500) for i in range(1, 4)], timeout=SEND_TIMEOUT)
    with sub_receiver(client, "peek", "red") as r:
        peeked = r.peek_messages(max_message_count=10, timeout=MGMT_TIMEOUT)
        assert [app_props(m)["n"] for m in peeked] == [1, 2, 3]
        assert [m.sequence_number for m in peeked] == [1, 2, 3]
    assert received_numbers(client, "peek", "red", 3)[0] == [1, 2, 3]
    received_numbers(client, "peek", "all", 3)


def test_receiving_from_a_topic_or_sending_to_a_subscription_is_refused(client):
    with pytest.raises(ServiceBusError) as e:
        with client.get_queue_receiver("refuse", **HANDLER_KW) as r:
            r.receive_messages(max_message_count=1, max_wait_time=2)
    assert "subscriptions" in str(e.value).lower(), str(e.value)
    with pytest.raises(ServiceBusError) as e:
        with client.get_queue_sender("refuse/Subscriptions/all", **HANDLER_KW) as s:
            s.send_messages(ServiceBusMessage("x"), timeout=SEND_TIMEOUT)
    assert "send to its topic" in str(e.value), str(e.value)


def test_a_topic_backlog_survives_a_restart(start_broker):
    b = start_broker(extra_toml=topics_toml("backlog"))
    c = sb_client(b)
    try:
        with topic_sender(c, "backlog") as s:
            s.send_messages([order(i, "red" if i % 2 else "green", 500) for i in range(1, 41)],
                            timeout=SEND_TIMEOUT)
        with sub_receiver(c, "backlog", "all") as r:
            for m in receive_n(r, 10):
                r.complete_message(m)
    finally:
        c.close()
    b.restart()
    c = sb_client(b)
    try:
        all_n, all_seq = received_numbers(c, "backlog", "all", 30)
        assert all_n == list(range(11, 41))
        assert all_seq == list(range(11, 41))
        red_n, _ = received_numbers(c, "backlog", "red", 20)
        assert red_n == list(range(1, 41, 2))
        with topic_sender(c, "backlog") as s:
            s.send_messages(order(41, "red", 500), timeout=SEND_TIMEOUT)
        # sequence numbers go on where they were, per subscription
        assert received_numbers(c, "backlog", "red", 1)[1] == [21]
    finally:
        c.close()


def test_topics_and_rules_from_an_emulator_config_json(start_broker, tmp_path):
    config = {
        "UserConfig": {
            "Namespaces": [{
                "Name": "sbemulatorns",
                "Queues": [],
                "Topics": [{
                    "Name": "topic.1",
                    "Properties": {"DefaultMessageTimeToLive": "PT1H",
                                   "RequiresDuplicateDetection": False},
                    "Subscriptions": [
                        {"Name": "subscription.1",
                         "Properties": {"LockDuration": "PT1M", "MaxDeliveryCount": 3},
                         "Rules": [{"Name": "app-prop-filter-1", "Properties": {
                             "FilterType": "Correlation",
                             "CorrelationFilter": {"ContentType": "application/text",
                                                   "CorrelationId": "id1", "Label": "subject1",
                                                   "Properties": {"prop3": "value3"}}}}]},
                        {"Name": "subscription.2",
                         "Properties": {},
                         "Rules": [{"Name": "sql-filter-1", "Properties": {
                             "FilterType": "Sql",
                             "SqlFilter": {"SqlExpression": "sys.MessageId = '123456' AND userProp1 = 'value1'"}}}]},
                        {"Name": "subscription.3", "Properties": {}},
                    ],
                }],
            }],
            "Logging": {"Type": "File"},
        }
    }
    path = tmp_path / "Config.json"
    path.write_text("// the emulator's format, comments and all\n" + json.dumps(config, indent=2))
    b = start_broker(config_file=path)
    c = sb_client(b)
    try:
        with topic_sender(c, "topic.1") as s:
            s.send_messages([
                ServiceBusMessage("a", content_type="application/text", correlation_id="id1",
                                  subject="subject1", application_properties={"prop3": "value3"}),
                ServiceBusMessage("b", message_id="123456", application_properties={"userProp1": "value1"}),
                ServiceBusMessage("c", correlation_id="id1"),
            ], timeout=SEND_TIMEOUT)
        for sub, bodies in [("subscription.1", [b"a"]), ("subscription.2", [b"b"]),
                            ("subscription.3", [b"a", b"b", b"c"])]:
            with sub_receiver(c, "topic.1", sub) as r:
                got = receive_n(r, len(bodies))
                assert [body_of(m) for m in got] == bodies, sub
                for m in got:
                    r.complete_message(m)
    finally:
        c.close()


def test_kill_during_fan_out_keeps_every_accepted_message_where_it_matched(start_broker):
    """A producer sends as fast as it can while the broker is killed (SIGKILL). Afterwards every
    message that was accepted is in every subscription its properties select, exactly once, and in
    no other; messages not accepted may be anywhere they match, or nowhere."""
    b = start_broker(extra_toml=topics_toml("crash"))
    accepted, sent = [], []
    stop = threading.Event()

    def produce():
        conn = connect(b)
        try:
            snd = conn.create_sender("crash")
            i = 0
            while not stop.is_set():
                i += 1
                m = Message(body="m%d" % i, properties={"n": i, "color": "red" if i % 3 else "green",
                                                        "amount": 500})
                sent.append(i)
                d = snd.send(m, timeout=10)
                if d.remote_state == Delivery.ACCEPTED:
                    accepted.append(i)
        except Exception:
            pass  # the broker went away mid-send

    t = threading.Thread(target=produce)
    t.start()
    deadline = time.monotonic() + 20
    while len(accepted) < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    b.kill9()
    stop.set()
    t.join(15)
    assert len(accepted) >= 200, "only %d accepted before the kill" % len(accepted)
    b.start()
    c = sb_client(b)
    try:
        def all_numbers(sub):
            got = []
            with sub_receiver(c, "crash", sub) as r:
                while True:
                    batch = r.receive_messages(max_message_count=100, max_wait_time=2)
                    if not batch:
                        return got
                    for m in batch:
                        got.append(app_props(m)["n"])
                        r.complete_message(m)

        everywhere = all_numbers("all")
        red = all_numbers("red")
        assert sorted(set(everywhere)) == sorted(everywhere), "a copy twice in 'all'"
        assert set(accepted) <= set(everywhere), "accepted but lost in 'all': %r" % sorted(
            set(accepted) - set(everywhere))[:10]
        want_red = {n for n in accepted if n % 3}
        assert want_red <= set(red), "accepted but lost in 'red'"
        assert all(n % 3 for n in red), "a green message in 'red'"
        # a message is in every subscription it matched or in none
        assert {n for n in everywhere if n % 3} == set(red)
        assert all_numbers("vip") == [] and all_numbers("blue") == []
    finally:
        c.close()


def test_rule_actions_from_the_config_change_only_their_copy(start_broker):
    """A rule with an action makes a copy of its own, changed, with RuleName; a plain rule of the
    same subscription still gives the unchanged copy, and other subscriptions are untouched."""
    toml = """
[[topics]]
name = "acts"
[[topics.subscriptions]]
name = "plain"
[[topics.subscriptions]]
name = "tagged"
[[topics.subscriptions.rules]]
name = "keep"
sql = "amount > 100"
[[topics.subscriptions.rules]]
name = "tag"
sql = "amount > 100"
action = "SET sys.Label = 'big-' + color; SET tier = 'gold'; REMOVE secret"
"""
    b = start_broker(extra_toml=toml)
    c = sb_client(b)
    try:
        with topic_sender(c, "acts") as s:
            s.send_messages(ServiceBusMessage("payload", subject="orig", message_id="m-1",
                                              application_properties={"amount": 500, "color": "red",
                                                                      "secret": "s"}),
                            timeout=SEND_TIMEOUT)
        with sub_receiver(c, "acts", "tagged") as r:
            got = receive_n(r, 2)
            assert len(got) == 2
            for m in got:
                r.complete_message(m)
        by_rule = {app_props(m).get("RuleName"): m for m in got}
        assert set(by_rule) == {None, "tag"}, [app_props(m) for m in got]
        changed, plain = by_rule["tag"], by_rule[None]
        assert changed.subject == "big-red" and changed.message_id == "m-1"
        assert app_props(changed)["tier"] == "gold" and "secret" not in app_props(changed)
        assert body_of(changed) == b"payload"
        assert plain.subject == "orig" and app_props(plain)["secret"] == "s"
        with sub_receiver(c, "acts", "plain") as r:
            (m,) = receive_n(r, 1)
            assert m.subject == "orig" and "RuleName" not in app_props(m)
            r.complete_message(m)
    finally:
        c.close()


def test_forwarding_chains_through_queues_topics_and_subscriptions(start_broker):
    """entry -> middle (queues) -> topic 'hub'; hub's subscription 'out' forwards to queue 'final',
    'relay' to topic 'edge' (subscription 'end'), 'keep' holds its own copies. A message sent to
    'entry' ends in 'final', 'end' and 'keep', nowhere else; scheduling through entry's
    $management lands in the same places."""
    toml = """
[[queues]]
name = "entry"
forward_to = "middle"
[[queues]]
name = "middle"
forward_to = "hub"
[[queues]]
name = "final"

[[topics]]
name = "hub"
[[topics.subscriptions]]
name = "out"
forward_to = "final"
[[topics.subscriptions]]
name = "keep"
[[topics.subscriptions]]
name = "relay"
forward_to = "edge"

[[topics]]
name = "edge"
[[topics.subscriptions]]
name = "end"
"""
    b = start_broker(queues=[], extra_toml=toml)
    c = sb_client(b)
    try:
        with c.get_queue_sender("entry", **HANDLER_KW) as s:
            s.send_messages(ServiceBusMessage("forwarded"), timeout=SEND_TIMEOUT)
            soon = datetime.datetime.now(UTC) + datetime.timedelta(seconds=1)
            s.schedule_messages(ServiceBusMessage("scheduled"), soon, timeout=MGMT_TIMEOUT)
            # cancelled through the same queue: its copies go from every place they were put
            later = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
            (seq,) = s.schedule_messages(ServiceBusMessage("cancelled"), later, timeout=MGMT_TIMEOUT)
            s.cancel_scheduled_messages(seq, timeout=MGMT_TIMEOUT)
        peeked = []
        with c.get_queue_receiver("final", **HANDLER_KW) as r:
            peeked += r.peek_messages(max_message_count=10, timeout=MGMT_TIMEOUT)
        for topic, sub in (("hub", "keep"), ("edge", "end")):
            with sub_receiver(c, topic, sub) as r:
                peeked += r.peek_messages(max_message_count=10, timeout=MGMT_TIMEOUT)
        assert b"cancelled" not in [body_of(m) for m in peeked]
        with c.get_queue_receiver("final", **HANDLER_KW) as r:
            got = receive_n(r, 2)
            assert sorted(body_of(m) for m in got) == [b"forwarded", b"scheduled"]
            for m in got:
                r.complete_message(m)
        for topic, sub in (("hub", "keep"), ("edge", "end")):
            with sub_receiver(c, topic, sub) as r:
                got = receive_n(r, 2)
                assert sorted(body_of(m) for m in got) == [b"forwarded", b"scheduled"], (topic, sub)
                for m in got:
                    r.complete_message(m)
        for q in ("entry", "middle"):
            with c.get_queue_receiver(q, **HANDLER_KW) as r:
                assert r.receive_messages(max_message_count=1, max_wait_time=1) == [], q
        for sub in ("out", "relay"):
            with sub_receiver(c, "hub", sub) as r:
                assert r.receive_messages(max_message_count=1, max_wait_time=1) == [], sub
    finally:
        c.close()


def test_forwarding_that_cannot_work_stops_the_broker_with_the_reason(tmp_path):
    cases = [
        ('[[queues]]\nname = "a"\nforward_to = "a"\n', "circle"),
        ('[[queues]]\nname = "a"\nforward_to = "nowhere"\n', "not a queue or topic"),
        ('[[topics]]\nname = "t"\n[[topics.subscriptions]]\nname = "s"\nforward_to = "t"\n',
         "t -> t/subscriptions/s -> t"),
        ('[[topics]]\nname = "t"\n[[topics.subscriptions]]\nname = "s"\nforward_to = "t/subscriptions/s"\n',
         "not a queue or topic"),
        # dead letters that could come back where they were dead-lettered
        ('[[queues]]\nname = "a"\nforward_dead_lettered_messages_to = "b"\n'
         '[[queues]]\nname = "b"\nforward_dead_lettered_messages_to = "a"\n', "circle: a -> b -> a"),
        ('[[topics]]\nname = "t"\n[[topics.subscriptions]]\nname = "s"\n'
         'forward_dead_lettered_messages_to = "t"\n', "t/subscriptions/s -> t/subscriptions/s"),
    ]
    for i, (toml, reason) in enumerate(cases):
        b = Broker(tmp_path / ("b%d" % i), queues=[], extra_toml=toml)
        p = subprocess.run(b.command(), capture_output=True, text=True, timeout=30)
        assert p.returncode != 0 and "READY" not in p.stdout, (toml, p.returncode, p.stdout, p.stderr)
        assert reason in p.stderr, (toml, p.stderr)


def test_topic_metrics_count_published_messages_copies_and_subscriptions(topics, client):
    with topic_sender(client, "peek") as s:
        s.send_messages([order(i, "red", 500) for i in range(100, 103)], timeout=SEND_TIMEOUT)
    status, _, body = topics.http_get("/metrics")
    assert status == 200
    text = body.decode()

    def value(line_start):
        lines = [ln for ln in text.splitlines() if ln.startswith(line_start)]
        assert lines, "no %s in /metrics" % line_start
        return float(lines[0].rsplit(" ", 1)[1])

    published = value('ferrobus_topic_messages_published_total{topic="peek"}')
    copies = value('ferrobus_topic_copies_total{topic="peek"}')
    assert published >= 3
    # every message reaches 'all', the red ones 'red' too
    assert copies >= 2 * published - 0.5, (published, copies)
    assert value('ferrobus_topic_filter_seconds_total{topic="peek"}') > 0
    assert value('ferrobus_entity_messages{entity="peek/Subscriptions/red",state="active"}') >= 3
    received_numbers(client, "peek", "red", 3)
    received_numbers(client, "peek", "all", 3)
