"""What was acknowledged survives a restart on the same data directory."""

import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def test_acknowledged_messages_survive_a_restart(fresh_broker, topic_name):
    client = AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    client.create_topics([NewTopic(topic_name, 2, 1)])[topic_name].result(10)
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap, "acks": "all"})
    for i in range(200):
        producer.produce(topic_name, value=b"%d" % i, partition=i % 2)
    assert producer.flush(20) == 0
    assert fresh_broker.stop() == 0
    fresh_broker.start()
    consumer = Consumer(
        {
            "bootstrap.servers": fresh_broker.bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic_name, p, 0) for p in range(2)])
    values = []
    deadline = time.time() + 20
    while time.time() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            values.append(int(message.value()))
        if len(values) == 200:
            break
    consumer.close()
    assert sorted(values) == list(range(200))
