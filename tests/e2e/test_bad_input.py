"""Bad input over a raw socket: each gets the answer Kafka gives (an error
code, or the connection closed), and the broker goes on serving everyone."""

import os
import socket
import struct
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c

from conftest import rss_kib

CORRUPT_MESSAGE = 2
INVALID_TOPIC_EXCEPTION = 17
UNSUPPORTED_VERSION = 35
INVALID_RECORD = 87
# Kafka's socket.request.max.bytes default.
FRAME_LIMIT = 100 * 1024 * 1024


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


def framed(payload):
    return struct.pack(">i", len(payload)) + payload


@pytest.mark.parametrize(
    "frame",
    [
        framed(b""),  # an empty frame: not even an API key
        framed(b"\x00\x03"),  # shorter than a request header
        framed(struct.pack(">hhi", 3, 1, 5)),  # the header stops before the client id
        framed(struct.pack(">hhih", 3, 1, 5, 200) + b"abc"),  # a client id longer than the frame
        # Metadata v1 whose one topic name claims more bytes than follow.
        framed(struct.pack(">hhih", 3, 1, 5, 3) + b"raw" + struct.pack(">ih", 1, 300) + b"t"),
        # Metadata v9 (flexible) with a compact array length that is not a varint's end.
        framed(struct.pack(">hhih", 3, 9, 5, 3) + b"raw" + b"\x00" + b"\xff" * 8),
    ],
    ids=["empty", "short-header", "no-client-id", "long-client-id", "short-string", "bad-varint"],
)
def test_malformed_requests_close_the_connection(broker, topic_name, frame):
    # Kafka closes a connection whose request it cannot parse.
    sock = connect(broker)
    sock.sendall(frame)
    assert closed_by_broker(sock)
    still_serves(broker, topic_name)


def test_a_frame_over_the_limit_is_refused_before_it_is_read(broker, topic_name):
    before = rss_kib(broker)
    # Just over the limit, far over it, and the largest length there is: the
    # broker closes each without reading (or allocating) what was claimed.
    for claimed in (FRAME_LIMIT + 1, 200 * 1024 * 1024, 2**31 - 1):
        socks = [connect(broker) for _ in range(4)]
        for sock in socks:
            sock.sendall(struct.pack(">i", claimed) + b"\x00" * 64)
        for sock in socks:
            assert closed_by_broker(sock), f"a frame claiming {claimed} bytes was not refused"
            sock.close()
    sock = connect(broker)
    sock.sendall(struct.pack(">i", -5))
    assert closed_by_broker(sock)
    grown_mib = (rss_kib(broker) - before) / 1024
    assert grown_mib < 64, f"the broker grew by {grown_mib:.0f} MiB on frames it should refuse"
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


def test_an_unsupported_api_versions_version_gets_the_v0_fallback(broker, topic_name):
    sock = connect(broker)
    sock.sendall(request(18, 99, 42, b""))
    frame = read_frame(sock)
    assert frame is not None, "the broker closed the connection instead of answering"
    # An ApiVersions v0 response: correlation id (header v0), error code, then
    # the table as a plain array of (api key, min version, max version).
    correlation_id, error_code, count = struct.unpack(">ihi", frame[:10])
    assert (correlation_id, error_code) == (42, UNSUPPORTED_VERSION)
    assert len(frame) == 10 + 6 * count, "a v0 body: no throttle time, no tagged fields"
    table = {
        key: (low, high)
        for key, low, high in (
            struct.unpack(">hhh", frame[10 + 6 * i : 16 + 6 * i]) for i in range(count)
        )
    }
    assert {0, 1, 3, 18} <= set(table)
    assert table[18][0] == 0 and table[18][1] >= 3
    # The client may go on, on the same connection, with a version it found.
    sock.sendall(request(18, 0, 43, b""))
    frame = read_frame(sock)
    sock.close()
    assert frame is not None
    assert struct.unpack(">ih", frame[:6]) == (43, 0)
    still_serves(broker, topic_name)


@pytest.mark.parametrize(
    "damage, expected",
    [
        ({"flip_at": 70}, CORRUPT_MESSAGE),  # inside the records: the CRC catches it
        ({"flip_at": 25}, CORRUPT_MESSAGE),  # the last offset delta: the CRC catches it
        # Kafka answers an older magic in Produce v3+ with INVALID_RECORD (its
        # request validation), a parser may see CORRUPT_MESSAGE first.
        ({"magic_override": 1}, (INVALID_RECORD, CORRUPT_MESSAGE)),
        ({"magic_override": 0}, (INVALID_RECORD, CORRUPT_MESSAGE)),
        # A magic from the future: Kafka's batch reader calls it corrupt.
        ({"magic_override": 3}, (CORRUPT_MESSAGE, INVALID_RECORD)),
        ({"last_offset_delta": 5}, INVALID_RECORD),
    ],
)
def test_damaged_record_batches_get_the_kafka_error(broker, topic_name, damage, expected):
    expected = expected if isinstance(expected, tuple) else (expected,)
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    good = batch([b"x" * 20, b"y" * 20])
    assert produce_error(broker, topic_name, good) == 0
    assert produce_error(broker, topic_name, batch([b"x" * 20, b"y" * 20], **damage)) in expected
    # Truncated: the batch length no longer matches.
    assert produce_error(broker, topic_name, good[:-3]) == CORRUPT_MESSAGE
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    low, high = consumer.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)
    consumer.close()
    assert (low, high) == (0, 2), "only the good batch was written"
    still_serves(broker, topic_name + "-after")


def create_topics_v2(names, correlation_id=9):
    """CreateTopics v2 (not flexible): one partition, replication factor 1."""
    body = struct.pack(">i", len(names))
    for name in names:
        encoded = name.encode()
        body += struct.pack(">h", len(encoded)) + encoded
        body += struct.pack(">ihii", 1, 1, 0, 0)  # partitions, rf, no assignments, no configs
    body += struct.pack(">i?", 10_000, False)  # timeout, validate_only
    return request(19, 2, correlation_id, body)


def create_topics_errors(broker, names):
    sock = connect(broker)
    sock.sendall(create_topics_v2(names))
    frame = read_frame(sock)
    sock.close()
    assert frame is not None, "the broker closed the connection instead of answering"
    correlation_id, _throttle, count = struct.unpack(">iii", frame[:12])
    assert (correlation_id, count) == (9, len(names))
    offset, errors = 12, {}
    for _ in range(count):
        (length,) = struct.unpack(">h", frame[offset : offset + 2])
        name = frame[offset + 2 : offset + 2 + length].decode()
        offset += 2 + length
        (error_code,) = struct.unpack(">h", frame[offset : offset + 2])
        (message_length,) = struct.unpack(">h", frame[offset + 2 : offset + 4])
        offset += 4 + max(message_length, 0)
        errors[name] = error_code
    return errors


@pytest.mark.parametrize(
    "name", ["bad/name", "..", ".", "", "x" * 250, "tab\there", "ünïcode", "a:b"]
)
def test_topic_names_kafka_rejects_get_invalid_topic_exception(broker, name):
    assert create_topics_errors(broker, [name]) == {name: INVALID_TOPIC_EXCEPTION}
    assert broker.alive()


def test_the_longest_legal_topic_name_is_accepted(broker, topic_name):
    # Kafka allows up to 249 characters of [a-zA-Z0-9._-].
    name = ("ok.name_-" + "z" * 249)[:249]
    assert create_topics_errors(broker, [name, "also/bad"]) == {
        name: 0,
        "also/bad": INVALID_TOPIC_EXCEPTION,
    }
    still_serves(broker, topic_name)


def new_log_lines(broker, since, needle, timeout_s=2):
    """The broker's log lines after byte `since` that contain `needle`."""
    deadline = time.time() + timeout_s
    while True:
        with open(broker.log_path, "rb") as log:
            log.seek(since)
            lines = [line for line in log.read().decode(errors="replace").splitlines()
                     if needle in line]
        if lines or time.time() > deadline:
            return lines
        time.sleep(0.1)


def log_size(broker):
    return os.path.getsize(broker.log_path)


def test_each_refusal_leaves_a_log_line(broker, topic_name):
    # Issue 4, point 5: a bad input gets its error code *and a log line*.
    # Every case runs, and the assertion names all that left none.
    missing = []

    since = log_size(broker)
    sock = connect(broker)
    sock.sendall(request(9999, 0, 1, b""))
    assert closed_by_broker(sock)
    if not new_log_lines(broker, since, "9999"):
        missing.append("an unknown API key (9999)")

    since = log_size(broker)
    sock = connect(broker)
    sock.sendall(struct.pack(">i", FRAME_LIMIT + 1))
    assert closed_by_broker(sock)
    if not new_log_lines(broker, since, str(FRAME_LIMIT + 1)):
        missing.append("a frame over the limit")

    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    since = log_size(broker)
    corrupt = batch([b"x" * 20, b"y" * 20], flip_at=70)
    assert produce_error(broker, topic_name, corrupt) == CORRUPT_MESSAGE
    if not new_log_lines(broker, since, topic_name):
        missing.append("a Produce refused with CORRUPT_MESSAGE (no line naming the topic)")

    since = log_size(broker)
    wrong_magic = batch([b"x" * 20], magic_override=3)
    assert produce_error(broker, topic_name, wrong_magic) in (CORRUPT_MESSAGE, INVALID_RECORD)
    if not new_log_lines(broker, since, topic_name):
        missing.append("a Produce with a wrong magic (no line naming the topic)")

    since = log_size(broker)
    assert create_topics_errors(broker, ["bad/name"]) == {"bad/name": INVALID_TOPIC_EXCEPTION}
    if not new_log_lines(broker, since, "bad/name"):
        missing.append("a CreateTopics refused with INVALID_TOPIC_EXCEPTION (no line naming it)")

    still_serves(broker, topic_name + "-after")
    assert missing == [], "no log line at the default level for: " + "; ".join(missing)


def test_memory_does_not_grow_under_repeated_bad_input(broker, topic_name):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    corrupt = produce_v3(topic_name, batch([b"x" * 500] * 20, flip_at=70))
    bad = [
        struct.pack(">i", 12) + b"\xde\xad\xbe\xef" * 3,
        struct.pack(">i", FRAME_LIMIT + 1),
        request(9999, 0, 1, b""),
        request(3, 1, 1, struct.pack(">i", 2**31 - 1)),
        framed(struct.pack(">hhih", 3, 1, 5, 200) + b"abc"),
    ]

    def round_of_bad_input(times):
        for _ in range(times):
            for frame in bad:
                sock = connect(broker)
                sock.sendall(frame)
                assert closed_by_broker(sock)
                sock.close()
            # A corrupt batch is answered, on a connection that stays open.
            sock = connect(broker)
            sock.sendall(corrupt)
            assert read_frame(sock) is not None
            sock.close()

    round_of_bad_input(30)  # warm up: buffers and allocator pools reach their size
    before = rss_kib(broker)
    round_of_bad_input(300)
    grown_mib = (rss_kib(broker) - before) / 1024
    assert grown_mib < 16, f"the broker grew by {grown_mib:.1f} MiB over 1800 bad requests"
    still_serves(broker, topic_name + "-after")
