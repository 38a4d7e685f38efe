"""A partition far past what the broker holds in memory (docs/protocol.md
§8.3: a partition's machine holds an index of its batches, and the batches
are read back from the log on disk): with no retention limit the broker
keeps every message, serves them all from the log start in order, and its
memory stays bounded; with `retention.bytes` it deletes the oldest down to
that size. Before batches were served from the log, a partition kept at
most 48 MiB, and before that bound, a partition past 64 MiB made a leader
stop on an assertion when it sent its snapshot."""

import subprocess
import time

from confluent_kafka.admin import AdminClient, NewTopic

from conftest import rss_kib

MESSAGES = 130 * 1024
VALUE_BYTES = 1000
RETAINED_BYTES = 16 << 20


def kcat(broker, *args, stdin=None, timeout=120):
    result = subprocess.run(
        ["kcat", "-b", broker.bootstrap, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def watermarks(broker, topic):
    # `-Q` with -1 asks for the end, -2 for the start: "topic [0] offset N".
    end = int(kcat(broker, "-Q", "-t", f"{topic}:0:-1").split()[-1])
    start = int(kcat(broker, "-Q", "-t", f"{topic}:0:-2").split()[-1])
    return start, end


def produce(broker, topic, messages):
    lines = b"".join(b"%d:%s\n" % (i, b"x" * VALUE_BYTES) for i in range(messages))
    kcat(
        broker,
        "-P", "-t", topic, "-K:", "-p", "0",
        "-X", "linger.ms=20", "-X", "batch.size=1000000",
        "-X", "enable.idempotence=true", "-X", "message.timeout.ms=60000",
        stdin=lines,
    )
    assert broker.process.poll() is None, broker.log()


def read_all(broker, topic):
    out = kcat(broker, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-f", "%o %k\n")
    return [line.split() for line in out.splitlines()]


def test_a_partition_past_memory_keeps_every_message_and_serves_them_from_disk(
    fresh_broker, topic_name
):
    admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    produce(fresh_broker, topic_name, MESSAGES)

    # Every message was acknowledged at the next offset, and with no
    # retention limit (the default, -1) none is deleted.
    assert watermarks(fresh_broker, topic_name) == (0, MESSAGES)

    # All of them read back from the log start, in order: the oldest from
    # the segments on disk, the newest from memory.
    read = read_all(fresh_broker, topic_name)
    assert [int(offset) for offset, _ in read] == list(range(MESSAGES))
    assert [int(key) for _, key in read] == list(range(MESSAGES))

    # The partition is bounded in memory: nowhere near the 130 MiB sent
    # twice over (an index of its batches, and the consensus log's tail).
    assert rss_kib(fresh_broker) < 400 * 1024, f"{rss_kib(fresh_broker)} KiB"

    # And it takes more writes at the next offsets.
    kcat(fresh_broker, "-P", "-t", topic_name, "-K:", "-p", "0", stdin=b"after:1\n")
    assert watermarks(fresh_broker, topic_name)[1] == MESSAGES + 1


def test_retention_bytes_deletes_the_oldest_down_to_its_size(fresh_broker, topic_name):
    admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    topic = NewTopic(topic_name, 1, 1, config={"retention.bytes": str(RETAINED_BYTES)})
    admin.create_topics([topic])[topic_name].result(10)
    messages = 48 * 1024
    produce(fresh_broker, topic_name, messages)
    start, end = watermarks(fresh_broker, topic_name)
    assert end == messages

    # Retention, which runs every second, deletes whole batches from the
    # front down to the size (a little more may stay).
    deadline = time.monotonic() + 30
    while (end - start) * (VALUE_BYTES + 10) > RETAINED_BYTES + (2 << 20):
        assert time.monotonic() < deadline, f"log start {start} of {end} after 30 s"
        time.sleep(0.5)
        start, end = watermarks(fresh_broker, topic_name)
    assert start > 0

    # What is kept reads back from the log start, in order, the newest last.
    read = read_all(fresh_broker, topic_name)
    assert int(read[0][0]) == start
    assert [int(offset) for offset, _ in read] == list(range(start, end))
    assert [int(key) for _, key in read] == list(range(start, end))
