"""The sparse index of a partition (docs/storage.md, "The sparse index"):
past 256 batches the broker seals them into chunks, one index entry each,
and a lookup inside a chunk rebuilds its batches from the log. A real
client seeks by time and by offset into the middle of chunks, before and
after a restart, and gets the exact record each time."""

import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# Each message is its own batch: about 12 chunks of 256 batches.
MESSAGES = 3000
STEP_MS = 10
PROBES = [0, 1, 255, 256, 257, 511, 1000, 1777, 2999]


def produce(broker, topic, base_ms):
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "batch.num.messages": 1,
            "linger.ms": 0,
            "enable.idempotence": True,
        }
    )
    for i in range(MESSAGES):
        producer.produce(topic, value=b"v%d" % i, partition=0, timestamp=base_ms + i * STEP_MS)
        producer.poll(0)
    assert producer.flush(60) == 0


def consumer(broker):
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "e2e-index",
            "enable.auto.commit": False,
        }
    )


def wait_until_served(reader, topic):
    """After a restart the partition has a leader again only once its
    group elected one: until then a client's metadata lacks it."""
    deadline = time.monotonic() + 30
    while True:
        try:
            marks = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            if marks == (0, MESSAGES):
                return
        except KafkaException as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"the partition is not served after 30 s: {error}")
        assert time.monotonic() < deadline, "the partition is not served after 30 s"
        time.sleep(0.2)


def check_lookups(broker, topic, base_ms):
    reader = consumer(broker)
    try:
        wait_until_served(reader, topic)
        for i in PROBES:
            # The exact record at a time, and at a time between two records.
            for at_ms in (base_ms + i * STEP_MS, base_ms + i * STEP_MS - STEP_MS // 2):
                found = reader.offsets_for_times([TopicPartition(topic, 0, at_ms)], timeout=10)
                assert found[0].error is None, found[0].error
                assert found[0].offset == i, (i, at_ms, found[0].offset)
        for i in PROBES:
            reader.assign([TopicPartition(topic, 0, i)])
            got = []
            deadline = time.monotonic() + 20
            while len(got) < min(5, MESSAGES - i):
                assert time.monotonic() < deadline, f"from {i}: {got}"
                message = reader.poll(1)
                if message is None:
                    continue
                assert message.error() is None, message.error()
                got.append((message.offset(), message.value(), message.timestamp()[1]))
            want = [
                (offset, b"v%d" % offset, base_ms + offset * STEP_MS)
                for offset in range(i, min(i + 5, MESSAGES))
            ]
            assert got == want
    finally:
        reader.close()


def test_lookups_by_time_and_offset_land_inside_chunks(fresh_broker, topic_name):
    admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    base_ms = int(time.time() * 1000) - 10 * MESSAGES * STEP_MS
    produce(fresh_broker, topic_name, base_ms)
    check_lookups(fresh_broker, topic_name, base_ms)
    # After a restart the index comes back from the snapshot and the log.
    assert fresh_broker.stop() == 0
    fresh_broker.start()
    check_lookups(fresh_broker, topic_name, base_ms)
