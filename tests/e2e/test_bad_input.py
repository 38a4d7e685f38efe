"""Bad input over a raw socket: each gets the answer Kafka gives (an error
code, or the connection closed), and the broker goes on serving everyone."""

import socket
import struct

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c

CORRUPT_MESSAGE = 2
UNSUPPORTED_VERSION = 35
INVALID_RECORD = 87


def connect(broker):
    sock = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    return sock


def read_frame(sock):
    """The next response frame, or None when the broker closed the socket."""
    prefix = b""
    while len(prefix) < 4:
        chunk = sock.recv(4 - len(prefix))
        if not chunk:
            return None
        prefix += chunk
    (length,) = struct.unpack(">i", prefix)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return body


def closed_by_broker(sock):
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def request(api_key, version, correlation_id, body):
    """A request with header v1 (non-flexible versions only)."""
    client = b"raw"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client)) + client
    frame = header + body
    return struct.pack(">i", len(frame)) + frame


def still_serves(broker, topic):
    """A normal client can still produce and consume."""
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic, value=b"after", partition=0)
    assert producer.flush(10) == 0
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    message = None
    for _ in range(50):
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            break
    consumer.close()
    assert message is not None and message.value() == b"after"
    assert broker.alive()


def batch(values, magic_override=None, flip_at=None, last_offset_delta=None):
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=None, key=None, value=value, headers=[])
    data = bytearray(builder.build())
    if magic_override is not None:
        data[16] = magic_override
    if flip_at is not None:
        data[flip_at] ^= 0xFF
    if last_offset_delta is not None:
        # Offsets that do not add up, under a CRC that is right: only the
        # broker's own check of the batch can catch it.
        data[23:27] = struct.pack(">i", last_offset_delta)
        data[17:21] = struct.pack(">I", calc_crc32c(bytes(data[21:])))
    return bytes(data)


def produce_v3(topic, records):
    name = topic.encode()
    body = struct.pack(">hhi", -1, -1, 5000)  # null transactional id, acks=all, timeout
    body += struct.pack(">i", 1) + struct.pack(">h", len(name)) + name
    body += struct.pack(">i", 1) + struct.pack(">i", 0) + struct.pack(">i", len(records)) + records
    return request(0, 3, 7, body)


def produce_error(broker, topic, records):
    sock = connect(broker)
    sock.sendall(produce_v3(topic, records))
    frame = read_frame(sock)
    sock.close()
    assert frame is not None, "the broker closed the connection instead of answering"
    correlation_id, topics = struct.unpack(">ii", frame[:8])
    assert (correlation_id, topics) == (7, 1)
    (name_length,) = struct.unpack(">h", frame[8:10])
    offset = 10 + name_length
    partitions, index, error_code = struct.unpack(">iih", frame[offset : offset + 10])
    assert (partitions, index) == (1, 0)
    return error_code


def test_garbage_after_a_valid_length_closes_the_connection(broker, topic_name):
    sock = connect(broker)
    sock.sendall(struct.pack(">i", 12) + b"\xde\xad\xbe\xef" * 3)
    assert closed_by_broker(sock)
    still_serves(broker, topic_name)


def test_a_frame_over_the_limit_is_refused_before_it_is_read(broker, topic_name):
    sock = connect(broker)
    sock.sendall(struct.pack(">i", 200 * 1024 * 1024) + b"\x00" * 64)
    assert closed_by_broker(sock)
    sock = connect(broker)
    sock.sendall(struct.pack(">i", -5))
    assert closed_by_broker(sock)
    still_serves(broker, topic_name)


def test_a_hostile_array_length_does_not_take_the_broker_down(broker, topic_name):
    # Metadata v1 whose topic array claims 2^31 - 1 names in a few bytes.
    sock = connect(broker)
    sock.sendall(request(3, 1, 1, struct.pack(">i", 2**31 - 1)))
    assert closed_by_broker(sock)
    still_serves(broker, topic_name)


def test_an_unknown_api_key_closes_the_connection(broker, topic_name):
    sock = connect(broker)
    sock.sendall(request(9999, 0, 1, b""))
    assert closed_by_broker(sock)
    still_serves(broker, topic_name)


def test_an_unsupported_version_of_another_api_closes_the_connection(broker, topic_name):
    sock = connect(broker)
    sock.sendall(request(0, 99, 1, b"\x00" * 16))
    assert closed_by_broker(sock)
    still_serves(broker, topic_name)


def test_an_unsupported_api_versions_version_gets_the_v0_fallback(broker):
    sock = connect(broker)
    sock.sendall(request(18, 99, 42, b""))
    frame = read_frame(sock)
    sock.close()
    correlation_id, error_code, count = struct.unpack(">ihi", frame[:10])
    assert (correlation_id, error_code) == (42, UNSUPPORTED_VERSION)
    keys = [struct.unpack(">hhh", frame[10 + 6 * i : 16 + 6 * i])[0] for i in range(count)]
    assert 18 in keys and 0 in keys and 1 in keys


@pytest.mark.parametrize(
    "damage, expected",
    [
        ({"flip_at": 70}, CORRUPT_MESSAGE),  # inside the records: the CRC catches it
        ({"flip_at": 25}, CORRUPT_MESSAGE),  # the last offset delta: the CRC catches it
        ({"magic_override": 1}, INVALID_RECORD),
        ({"last_offset_delta": 5}, INVALID_RECORD),
    ],
)
def test_damaged_record_batches_get_the_kafka_error(broker, topic_name, damage, expected):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    good = batch([b"x" * 20, b"y" * 20])
    assert produce_error(broker, topic_name, good) == 0
    assert produce_error(broker, topic_name, batch([b"x" * 20, b"y" * 20], **damage)) == expected
    # Truncated: the batch length no longer matches.
    assert produce_error(broker, topic_name, good[:-3]) == CORRUPT_MESSAGE
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    low, high = consumer.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)
    consumer.close()
    assert (low, high) == (0, 2), "only the good batch was written"
