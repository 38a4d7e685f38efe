"""A partition past what Runnel holds in memory (docs/guarantees.md, "A
partition keeps at most 48 MiB of batches"): the broker keeps serving, loses
nothing acknowledged that retention did not delete, and its memory stays
bounded. Before the bound, a partition past 64 MiB made a leader stop on an
assertion when it sent its snapshot, and past 1 GiB even a single node."""

import subprocess
import time

from confluent_kafka.admin import AdminClient, NewTopic

from conftest import rss_kib

MESSAGES = 130 * 1024
VALUE_BYTES = 1000
RETENTION_CEILING_BYTES = 48 << 20


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


def test_a_partition_past_the_memory_bound_keeps_the_newest_and_serves_on(fresh_broker, topic_name):
    admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(10)
    lines = b"".join(b"%d:%s\n" % (i, b"x" * VALUE_BYTES) for i in range(MESSAGES))
    kcat(
        fresh_broker,
        "-P", "-t", topic_name, "-K:", "-p", "0",
        "-X", "linger.ms=20", "-X", "batch.size=1000000",
        # Idempotent, so that the batches the bound refuses (retried once
        # retention made room) keep their order.
        "-X", "enable.idempotence=true", "-X", "message.timeout.ms=60000",
        stdin=lines,
    )
    assert fresh_broker.process.poll() is None, fresh_broker.log()

    # Every message was acknowledged at the next offset ...
    start, end = watermarks(fresh_broker, topic_name)
    assert end == MESSAGES
    # ... and retention, which runs every second, deletes the oldest down to
    # the ceiling (whole batches: a little more may stay).
    deadline = time.monotonic() + 30
    while (end - start) * (VALUE_BYTES + 10) > RETENTION_CEILING_BYTES + (2 << 20):
        assert time.monotonic() < deadline, f"log start {start} of {end} after 30 s"
        time.sleep(0.5)
        start, end = watermarks(fresh_broker, topic_name)
    assert start > 0

    # What is kept reads back from the log start, in order, the newest last.
    out = kcat(fresh_broker, "-C", "-t", topic_name, "-p", "0", "-o", "beginning", "-e", "-f", "%o %k\n")
    read = [line.split() for line in out.splitlines()]
    assert int(read[0][0]) == start
    assert [int(offset) for offset, _ in read] == list(range(start, end))
    assert [int(key) for _, key in read] == list(range(start, end))

    # The partition is bounded in memory: nowhere near the 130 MiB sent
    # twice over (the batches and the consensus log's tail).
    assert rss_kib(fresh_broker) < 400 * 1024, f"{rss_kib(fresh_broker)} KiB"

    # And it takes more writes at the next offsets.
    kcat(fresh_broker, "-P", "-t", topic_name, "-K:", "-p", "0", stdin=b"after:1\n")
    assert watermarks(fresh_broker, topic_name)[1] == MESSAGES + 1
