"""confluent-kafka (librdkafka 2.16): the client most applications use."""

import time

import pytest
from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
PER_CODEC = 100


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def create(broker, name, partitions=1, config=None):
    # The client must outlive its futures, or they fail with _DESTROY.
    client = admin(broker)
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
    )
    futures[name].result(15)


def consume_all(broker, name, partitions, expected, isolation="read_committed"):
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "e2e-unused",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    consumer.assign([TopicPartition(name, p, 0) for p in range(partitions)])
    messages = []
    deadline = time.time() + 20
    while len(messages) < expected and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is None:
            continue
        assert message.error() is None, message.error()
        messages.append(message)
    # Nothing more arrives after the expected count.
    extra = consumer.poll(0.5)
    assert extra is None or extra.error() is not None, "unexpected extra message"
    consumer.close()
    return messages


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_every_codec_round_trips_with_keys_headers_and_nulls(broker, topic_name, acks):
    create(broker, topic_name, partitions=3)
    sent = []
    for codec in CODECS:
        producer = Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "compression.type": codec,
                "acks": acks,
                "linger.ms": 5,
            }
        )
        errors = []
        for i in range(PER_CODEC):
            key = None if i % 7 == 0 else f"{codec}-key-{i}".encode()
            value = None if i % 11 == 0 else (f"{codec}-value-{i}-" * 5).encode()
            headers = [("codec", codec.encode()), ("i", str(i).encode())]
            partition = i % 3
            producer.produce(
                topic_name,
                key=key,
                value=value,
                partition=partition,
                headers=headers,
                on_delivery=lambda err, msg: errors.append(err) if err else None,
            )
            sent.append((partition, key, value, headers))
        assert producer.flush(20) == 0
        assert errors == []
    received = consume_all(broker, topic_name, 3, len(sent))
    assert len(received) == len(sent)
    for partition in range(3):
        got = [m for m in received if m.partition() == partition]
        want = [s for s in sent if s[0] == partition]
        # Every message once, in order, at contiguous offsets from 0.
        assert [m.offset() for m in got] == list(range(len(want)))
        assert [(m.key(), m.value(), m.headers()) for m in got] == [
            (k, v, h) for _, k, v, h in want
        ]


def test_idempotent_producer_and_both_isolation_levels(broker, topic_name):
    create(broker, topic_name, partitions=2)
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 1,
        }
    )
    for i in range(300):
        producer.produce(topic_name, value=str(i).encode(), partition=i % 2)
    assert producer.flush(20) == 0
    for isolation in ("read_committed", "read_uncommitted"):
        messages = consume_all(broker, topic_name, 2, 300, isolation)
        for partition in range(2):
            mine = [m for m in messages if m.partition() == partition]
            assert [int(m.value()) for m in mine] == list(range(partition, 300, 2))
            assert [m.offset() for m in mine] == list(range(150))


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_idempotent_producer_reports_each_offset_once(broker, topic_name, codec):
    create(broker, topic_name)
    producer = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            # librdkafka refuses idempotence with any acks but all.
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": codec,
            "linger.ms": 2,
        }
    )
    offsets = []
    for i in range(200):
        producer.produce(
            topic_name,
            key=b"k%d" % i,
            value=b"%d" % i,
            partition=0,
            on_delivery=lambda err, msg: offsets.append((err, msg.offset())),
        )
    assert producer.flush(20) == 0
    assert [err for err, _ in offsets if err is not None] == []
    assert sorted(offset for _, offset in offsets) == list(range(200))
    messages = consume_all(broker, topic_name, 1, 200)
    assert [(m.offset(), m.value()) for m in messages] == [(i, b"%d" % i) for i in range(200)]


def test_admin_list_offsets_earliest_latest_and_by_time(broker, topic_name):
    create(broker, topic_name, partitions=2)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    base_ms = int(time.time() * 1000) - 60_000
    for i in range(6):
        producer.produce(topic_name, value=b"%d" % i, partition=1, timestamp=base_ms + i * 1000)
    assert producer.flush(10) == 0
    client = admin(broker)

    def list_offsets(spec, partition=1, isolation=IsolationLevel.READ_COMMITTED):
        tp = TopicPartition(topic_name, partition)
        futures = client.list_offsets({tp: spec}, isolation_level=isolation)
        return futures[tp].result(10)

    assert list_offsets(OffsetSpec.earliest()).offset == 0
    assert list_offsets(OffsetSpec.latest()).offset == 6
    uncommitted = list_offsets(OffsetSpec.latest(), isolation=IsolationLevel.READ_UNCOMMITTED)
    assert uncommitted.offset == 6
    at = list_offsets(OffsetSpec.for_timestamp(base_ms + 2500))
    assert (at.offset, at.timestamp) == (3, base_ms + 3000)
    assert list_offsets(OffsetSpec.for_timestamp(base_ms)).offset == 0
    assert list_offsets(OffsetSpec.for_timestamp(base_ms + 10**7)).offset == -1
    # The empty partition.
    assert list_offsets(OffsetSpec.earliest(), partition=0).offset == 0
    assert list_offsets(OffsetSpec.latest(), partition=0).offset == 0


def test_offsets_by_time_and_watermarks(broker, topic_name):
    create(broker, topic_name)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    base_ms = int(time.time() * 1000) - 100_000
    for i in range(10):
        producer.produce(topic_name, value=b"v%d" % i, partition=0, timestamp=base_ms + i * 1000)
    producer.flush(10)
    # No offsets are committed: consumer groups are not there yet (issue 6).
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "e2e-unused", "enable.auto.commit": False}
    )
    low, high = consumer.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)
    assert (low, high) == (0, 10)
    found = consumer.offsets_for_times([TopicPartition(topic_name, 0, base_ms + 4500)], timeout=10)
    assert found[0].offset == 5
    after = consumer.offsets_for_times([TopicPartition(topic_name, 0, base_ms + 999_999)], timeout=10)
    assert after[0].offset == -1
    consumer.close()


def test_log_append_time_topics_stamp_the_broker_time(broker, topic_name):
    create(broker, topic_name, config={"message.timestamp.type": "LogAppendTime"})
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic_name, value=b"stamped", partition=0, timestamp=1_000)
    producer.flush(10)
    (message,) = consume_all(broker, topic_name, 1, 1)
    kind, stamp = message.timestamp()
    assert kind == TIMESTAMP_LOG_APPEND_TIME
    assert abs(stamp - time.time() * 1000) < 60_000


def test_admin_create_describe_grow_delete(broker, topic_name):
    client = admin(broker)
    create(broker, topic_name, partitions=2, config={"retention.ms": "3600000"})
    metadata = client.list_topics(timeout=10)
    assert len(metadata.topics[topic_name].partitions) == 2
    described = client.describe_topics(TopicCollection([topic_name]))[topic_name].result(10)
    assert described.name == topic_name and not described.is_internal
    assert described.topic_id is not None and str(described.topic_id) != "AAAAAAAAAAAAAAAAAAAAAA"
    assert [p.id for p in described.partitions] == [0, 1]
    for partition in described.partitions:
        assert partition.leader is not None and partition.leader.id == 1
        assert [node.id for node in partition.replicas] == [1]
        assert [node.id for node in partition.isr] == [1]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    configs = client.describe_configs([resource])[resource].result(10)
    assert configs["retention.ms"].value == "3600000"
    assert configs["cleanup.policy"].value == "delete"
    client.create_partitions([NewPartitions(topic_name, 4)])[topic_name].result(10)
    deadline = time.time() + 10
    while time.time() < deadline:
        if len(client.list_topics(timeout=10).topics[topic_name].partitions) == 4:
            break
        time.sleep(0.1)
    assert len(client.list_topics(timeout=10).topics[topic_name].partitions) == 4
    with pytest.raises(KafkaException) as error:
        client.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    assert error.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    client.delete_topics([topic_name])[topic_name].result(10)
    assert topic_name not in client.list_topics(timeout=10).topics


@pytest.mark.parametrize("name", ["bad/name", "..", "x" * 250, "spaces here"])
def test_invalid_topic_names_are_refused(broker, name):
    client = admin(broker)
    futures = client.create_topics([NewTopic(name, 1, 1)])
    with pytest.raises(KafkaException) as error:
        futures[name].result(10)
    # INVALID_TOPIC_EXCEPTION (17); librdkafka calls it TOPIC_EXCEPTION.
    assert error.value.args[0].code() == KafkaError.TOPIC_EXCEPTION


def test_bad_configs_are_refused(broker, topic_name):
    client = admin(broker)
    futures = client.create_topics(
        [NewTopic(topic_name, 1, 1, config={"cleanup.policy": "compact"})]
    )
    with pytest.raises(KafkaException) as error:
        futures[topic_name].result(10)
    assert error.value.args[0].code() == KafkaError.INVALID_CONFIG
