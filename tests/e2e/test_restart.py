"""What was acknowledged survives a restart on the same data directory, at
the same offsets, and the log goes on from there."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def produce(broker, topic, values, partitions):
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    errors = []
    for i in values:
        producer.produce(
            topic,
            key=b"k%d" % i,
            value=b"%d" % i,
            partition=i % partitions,
            headers=[("i", b"%d" % i)],
            on_delivery=lambda err, msg: errors.append(err) if err else None,
        )
    assert producer.flush(20) == 0
    assert errors == []


def consume(broker, topic, partitions, expected):
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages = []
    deadline = time.time() + 20
    while len(messages) < expected and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is not None:
            assert message.error() is None, message.error()
            messages.append((message.partition(), message.offset(), message.key(),
                             message.value(), message.headers()))
    consumer.close()
    # A stable sort by partition keeps each partition's order of arrival.
    return sorted(messages, key=lambda m: m[0])


def expected_log(values, partitions):
    log = []
    for partition in range(partitions):
        mine = [i for i in values if i % partitions == partition]
        log += [
            (partition, offset, b"k%d" % i, b"%d" % i, [("i", b"%d" % i)])
            for offset, i in enumerate(mine)
        ]
    return log


def test_acknowledged_messages_survive_a_restart(fresh_broker, topic_name):
    client = AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    client.create_topics([NewTopic(topic_name, 2, 1)])[topic_name].result(10)
    produce(fresh_broker, topic_name, range(200), 2)
    assert fresh_broker.stop() == 0, "SIGTERM exits 0"
    fresh_broker.start()
    assert consume(fresh_broker, topic_name, 2, 200) == expected_log(range(200), 2)
    # The topic and its log go on after the restart, at the next offsets.
    produce(fresh_broker, topic_name, range(200, 260), 2)
    assert fresh_broker.stop() == 0
    fresh_broker.start()
    metadata = AdminClient({"bootstrap.servers": fresh_broker.bootstrap}).list_topics(timeout=10)
    assert len(metadata.topics[topic_name].partitions) == 2
    assert consume(fresh_broker, topic_name, 2, 260) == expected_log(range(260), 2)
