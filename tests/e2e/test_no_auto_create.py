"""A broker with topic auto-creation off: producing to a missing or deleted
topic fails cleanly, it does not hang or create the topic."""

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker


@pytest.fixture(scope="module")
def strict_broker(tmp_path_factory):
    base = tmp_path_factory.mktemp("strict")
    config = base / "runnel.toml"
    config.write_text("[topic_defaults]\nauto_create = false\npartitions = 2\n")
    instance = Broker(base / "data", base / "broker.log", ["--config", str(config)])
    instance.start()
    yield instance
    assert instance.stop() == 0


def produce_one(broker, name):
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 3000}
    )
    errors = []
    producer.produce(name, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)
    return errors


def test_produce_to_a_deleted_topic_fails(strict_broker, topic_name):
    client = AdminClient({"bootstrap.servers": strict_broker.bootstrap})
    client.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    assert produce_one(strict_broker, topic_name) == [None]
    client.delete_topics([topic_name])[topic_name].result(10)
    (error,) = produce_one(strict_broker, topic_name)
    assert error is not None
    assert error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                            KafkaError._MSG_TIMED_OUT)
    assert topic_name not in client.list_topics(timeout=10).topics
    assert strict_broker.alive()


def test_topic_defaults_come_from_the_config_file(strict_broker, topic_name):
    client = AdminClient({"bootstrap.servers": strict_broker.bootstrap})
    client.create_topics([NewTopic(topic_name)])[topic_name].result(10)
    assert len(client.list_topics(timeout=10).topics[topic_name].partitions) == 2
