"""ForwardDeadLetteredMessagesTo: what a queue or subscription dead-letters moves to another
entity, driven by the official Python SDK (azure-servicebus 7.15.0) and, for the crash test,
python-qpid-proton.

The broker moves a forwarding dead-letter queue's messages on its periodic sweep (every 100 ms),
so the tests wait for them at the destination rather than expecting them at once.
"""

import json
import threading
import time

from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from proton import Message

from helpers import connect
from sdk_helpers import HANDLER_KW, body_of, receive_n, sb_client

SEND_TIMEOUT = 20

TOML = """
[[queues]]
name = "work"
max_delivery_count = 2
forward_dead_lettered_messages_to = "poison"

[[queues]]
name = "poison"

[[topics]]
name = "orders"
[[topics.subscriptions]]
name = "billing"
forward_dead_lettered_messages_to = "Poison"
"""


def drain(receiver, want, timeout=10.0):
    """Receives and completes up to `want` messages; returns them."""
    got = receive_n(receiver, want, timeout=timeout)
    for m in got:
        receiver.complete_message(m)
    return got


def assert_empty(client, queue=None, topic=None, sub=None, sub_queue=None):
    if queue is not None:
        r = client.get_queue_receiver(queue, sub_queue=sub_queue, **HANDLER_KW)
    else:
        r = client.get_subscription_receiver(topic, sub, sub_queue=sub_queue, **HANDLER_KW)
    with r:
        assert r.peek_messages(max_message_count=10, timeout=10) == [], (queue or sub, sub_queue)


def test_dead_letters_arrive_at_the_destination_with_reason_description_and_source(start_broker):
    b = start_broker(queues=[], extra_toml=TOML)
    c = sb_client(b)
    try:
        with c.get_queue_sender("work", **HANDLER_KW) as s:
            s.send_messages(ServiceBusMessage("explicit", message_id="m-1"), timeout=SEND_TIMEOUT)
        with c.get_queue_receiver("work", **HANDLER_KW) as r:
            (m,) = receive_n(r, 1)
            r.dead_letter_message(m, reason="bad-order", error_description="amount is missing")
        with c.get_queue_sender("work", **HANDLER_KW) as s:
            s.send_messages(ServiceBusMessage("retried", message_id="m-2"), timeout=SEND_TIMEOUT)
        with c.get_queue_receiver("work", **HANDLER_KW) as r:
            for _ in range(2):
                (m,) = receive_n(r, 1)
                r.abandon_message(m)
        with c.get_topic_sender("orders", **HANDLER_KW) as s:
            s.send_messages(ServiceBusMessage("from-billing", message_id="m-3"),
                            timeout=SEND_TIMEOUT)
        with c.get_subscription_receiver("orders", "billing", **HANDLER_KW) as r:
            (m,) = receive_n(r, 1)
            r.dead_letter_message(m, reason="declined")

        with c.get_queue_receiver("poison", **HANDLER_KW) as r:
            got = {body_of(m): m for m in drain(r, 3)}
        assert set(got) == {b"explicit", b"retried", b"from-billing"}, sorted(got)
        explicit, retried, billing = got[b"explicit"], got[b"retried"], got[b"from-billing"]
        assert explicit.dead_letter_reason == "bad-order"
        assert explicit.dead_letter_error_description == "amount is missing"
        assert explicit.dead_letter_source == "work"
        assert explicit.message_id == "m-1" and explicit.delivery_count == 0
        assert retried.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert retried.dead_letter_source == "work"
        assert billing.dead_letter_reason == "declined"
        assert billing.dead_letter_source == "orders/Subscriptions/billing"
        # nothing stays behind in the dead-letter queues it left
        assert_empty(c, queue="work", sub_queue=ServiceBusSubQueue.DEAD_LETTER)
        assert_empty(c, topic="orders", sub="billing", sub_queue=ServiceBusSubQueue.DEAD_LETTER)
        assert_empty(c, queue="poison")
    finally:
        c.close()


def test_forward_dead_lettered_messages_to_from_an_emulator_config_json(start_broker, tmp_path):
    queue = lambda name, props: {"Name": name, "Properties": props}  # noqa: E731
    config = {"UserConfig": {"Namespaces": [{"Name": "sbemulatorns", "Queues": [
        queue("queue.1", {"MaxDeliveryCount": 1, "ForwardDeadLetteredMessagesTo": "queue.dlq"}),
        queue("queue.dlq", {"ForwardDeadLetteredMessagesTo": ""}),
    ], "Topics": []}], "Logging": {"Type": "File"}}}
    path = tmp_path / "Config.json"
    path.write_text(json.dumps(config, indent=2))
    b = start_broker(config_file=path)
    assert "ForwardDeadLetteredMessagesTo" not in b.stderr_text(), b.stderr_text()
    c = sb_client(b)
    try:
        with c.get_queue_sender("queue.1", **HANDLER_KW) as s:
            s.send_messages(ServiceBusMessage("once"), timeout=SEND_TIMEOUT)
        with c.get_queue_receiver("queue.1", **HANDLER_KW) as r:
            (m,) = receive_n(r, 1)
            r.abandon_message(m)
        with c.get_queue_receiver("queue.dlq", **HANDLER_KW) as r:
            (m,) = drain(r, 1)
        assert body_of(m) == b"once" and m.dead_letter_source == "queue.1"
    finally:
        c.close()


def test_a_kill_while_dead_letters_move_loses_and_duplicates_nothing(start_broker):
    """Waves of messages are dead-lettered (a receiver takes them and goes away, with
    max_delivery_count 1) while the broker forwards them; it is killed (SIGKILL) in the middle.
    After a restart every message is in exactly one place: the destination or the dead-letter
    queue it has not left yet (from where the restarted broker forwards it)."""
    toml = """
[[queues]]
name = "work"
max_delivery_count = 1
forward_dead_lettered_messages_to = "poison"
[[queues]]
name = "poison"
"""
    b = start_broker(queues=[], extra_toml=toml)
    total = 0
    stop = threading.Event()

    def dead_letter_waves():
        nonlocal total
        try:
            while not stop.is_set():
                conn = connect(b)
                snd = conn.create_sender("work")
                for _ in range(100):
                    total += 1
                    snd.send(Message(body="m%d" % total, properties={"n": total}), timeout=10)
                rcv = conn.create_receiver("work", credit=100)
                for _ in range(100):
                    rcv.receive(timeout=10)  # locked, never settled
                conn.close()  # the locks end: each message is dead-lettered
        except Exception:
            pass  # the broker went away

    t = threading.Thread(target=dead_letter_waves)
    t.start()
    deadline = time.monotonic() + 20
    while total < 700 and time.monotonic() < deadline:
        time.sleep(0.05)
    b.kill9()
    stop.set()
    t.join(20)
    assert total >= 700, "only %d messages sent before the kill" % total
    b.start()
    c = sb_client(b)
    try:
        seen = []
        with c.get_queue_receiver("poison", **HANDLER_KW) as r:
            while True:
                batch = r.receive_messages(max_message_count=200, max_wait_time=3)
                if not batch:
                    break
                for m in batch:
                    seen.append(body_of(m).decode())
                    r.complete_message(m)
        with c.get_queue_receiver("work", **HANDLER_KW) as r:
            left = r.receive_messages(max_message_count=200, max_wait_time=1)
            for m in left:
                seen.append(body_of(m).decode())
                r.complete_message(m)
        assert len(seen) == len(set(seen)), "a message in two places"
        sent_before = {"m%d" % n for n in range(1, total + 1)}
        assert set(seen) <= sent_before
        # every message of a wave whose receiver got them all was dead-lettered durably before
        # the next wave began, so all but the last (interrupted) wave are accounted for
        complete_waves = (total - 1) // 100
        want = {"m%d" % n for n in range(1, complete_waves * 100 + 1)}
        assert want <= set(seen), "lost: %r" % sorted(want - set(seen))[:10]
        assert_empty(c, queue="work", sub_queue=ServiceBusSubQueue.DEAD_LETTER)
    finally:
        c.close()
