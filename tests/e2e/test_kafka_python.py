"""kafka-python: a pure-Python client that encodes requests its own way and
infers the broker's version from the ApiVersions table. run.sh runs this
file with kafka-python 3.x and again with 2.x."""

import time

import kafka
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import InvalidTopicError, TopicAlreadyExistsError

MAJOR = int(kafka.__version__.split(".")[0])
CODECS = [None, "gzip", "snappy", "lz4", "zstd"]


def read_exactly(consumer, count, timeout_s=20):
    """Polls until `count` messages came, then checks that no more come."""
    messages = []
    deadline = time.time() + timeout_s
    while len(messages) < count and time.time() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            messages.extend(records)
    extra = consumer.poll(timeout_ms=300)
    assert not any(extra.values()), f"unexpected extra messages: {extra}"
    return messages


def test_codecs_keys_headers_round_trip(broker, topic_name):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic_name, 2, 1)])
    sent = []
    for codec in CODECS:
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap, compression_type=codec, acks="all"
        )
        futures = []
        for i in range(50):
            key = None if i % 5 == 0 else b"key-%d" % i
            # Key and value both null is not a valid record for kafka-python.
            value = None if i % 9 == 0 and key is not None else b"%s-%d" % (str(codec).encode(), i)
            headers = [("n", str(i).encode())]
            futures.append(
                producer.send(topic_name, key=key, value=value, partition=i % 2, headers=headers)
            )
            sent.append((i % 2, key, value, headers))
        producer.flush()
        for future in futures:
            future.get(timeout=10)
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)])
    consumer.seek_to_beginning()
    received = read_exactly(consumer, len(sent))
    consumer.close()
    assert len(received) == len(sent)
    for partition in (0, 1):
        got = [m for m in received if m.partition == partition]
        want = [s for s in sent if s[0] == partition]
        assert [m.offset for m in got] == list(range(len(want)))
        assert [(m.key, m.value, list(m.headers)) for m in got] == [(k, v, h) for _, k, v, h in want]


@pytest.mark.skipif(MAJOR < 2, reason="needs kafka-python 2 or newer")
def test_offsets_and_admin(broker, topic_name):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic_name, 1, 1)])
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics([NewTopic(topic_name, 1, 1)])
    with pytest.raises(InvalidTopicError):
        admin.create_topics([NewTopic("no/slashes", 1, 1)])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    base_ms = int(time.time() * 1000) - 50_000
    for i in range(5):
        producer.send(topic_name, value=b"%d" % i, partition=0, timestamp_ms=base_ms + i * 1000)
    producer.flush()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    tp = TopicPartition(topic_name, 0)
    assert consumer.beginning_offsets([tp])[tp] == 0
    assert consumer.end_offsets([tp])[tp] == 5
    assert consumer.offsets_for_times({tp: base_ms + 2500})[tp].offset == 3
    consumer.close()
    admin.delete_topics([topic_name])
    assert topic_name not in admin.list_topics()


@pytest.mark.skipif(MAJOR < 3, reason="kafka-python 2.x has no idempotent producer")
def test_idempotent_producer(broker, topic_name):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True)
    futures = [producer.send(topic_name, value=b"%d" % i, partition=0) for i in range(100)]
    producer.flush()
    offsets = [future.get(timeout=10).offset for future in futures]
    assert offsets == list(range(100))


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_each_acks_setting(broker, topic_name, acks):
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, acks=acks, compression_type="gzip", linger_ms=5
    )
    futures = [
        producer.send(topic_name, key=b"k%d" % i, value=b"v%d" % i, partition=0)
        for i in range(100)
    ]
    producer.flush()
    offsets = [future.get(timeout=10).offset for future in futures]
    producer.close()
    if acks != 0:
        # With acks=0 no answer comes, so no offset is known (-1).
        assert offsets == list(range(100))
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic_name, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    received = [(m.offset, m.key, m.value) for m in read_exactly(consumer, 100)]
    consumer.close()
    assert received == [(i, b"k%d" % i, b"v%d" % i) for i in range(100)]


def test_broker_version_inferred_and_topics_described(broker, topic_name):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(topic_name, 3, 1)])
    # kafka-python picks its request versions from the ApiVersions table it
    # matched to a Kafka release: a 3.x-like table must not read as old.
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    assert consumer.config["api_version"] >= (2, 0), consumer.config["api_version"]
    assert consumer.partitions_for_topic(topic_name) == {0, 1, 2}
    consumer.close()
    (described,) = admin.describe_topics([topic_name])
    assert described["error_code"] == 0
    assert sorted(p["partition"] if "partition" in p else p["partition_index"]
                  for p in described["partitions"]) == [0, 1, 2]
    admin.close()


@pytest.mark.skipif(MAJOR < 3, reason="kafka-python 2.x has no isolation_level setting")
@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
def test_isolation_levels(broker, topic_name, isolation):
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(30):
        producer.send(topic_name, value=b"%d" % i, partition=0)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
    )
    tp = TopicPartition(topic_name, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    received = [(m.offset, m.value) for m in read_exactly(consumer, 30)]
    assert received == [(i, b"%d" % i) for i in range(30)]
    assert consumer.end_offsets([tp])[tp] == 30
    consumer.close()
