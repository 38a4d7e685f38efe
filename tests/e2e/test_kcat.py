"""kcat, built on Debian's librdkafka 2.0.2: the old librdkafka must work too."""

import subprocess
import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(broker, name, partitions):
    client = AdminClient({"bootstrap.servers": broker.bootstrap})
    client.create_topics([NewTopic(name, partitions, 1)])[name].result(10)


def kcat(broker, *args, stdin=None, timeout=30):
    result = subprocess.run(
        ["kcat", "-b", broker.bootstrap, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def test_metadata_lists_the_broker(broker):
    out = kcat(broker, "-L")
    assert f"broker 1 at {broker.bootstrap}" in out


def test_the_old_librdkafka_parses_the_api_versions_v3_answer(broker):
    # Issue 4's trap: librdkafka 2.0.2 read past the end of an ApiVersions v3
    # answer that carried extra tagged fields ("Protocol read buffer
    # underflow"), then fell back to guessing the broker's features.
    result = subprocess.run(
        ["kcat", "-b", broker.bootstrap, "-L", "-X", "debug=protocol,broker,feature"],
        capture_output=True,
        timeout=30,
    )
    log = result.stderr.decode(errors="replace")
    assert result.returncode == 0, log[-3000:]
    assert "Received ApiVersionResponse (v3" in log, log[-3000:]
    assert "underflow" not in log.lower()
    features = [line for line in log.splitlines() if "Updated enabled protocol features to" in line]
    assert features, log[-3000:]
    for feature in ("MsgVer2", "IdempotentProducer", "ZSTD", "OffsetTime"):
        assert feature in features[-1], features[-1]


def test_metadata_lists_a_topic_and_its_partitions(broker, topic_name):
    create_topic(broker, topic_name, 3)
    out = kcat(broker, "-L", "-t", topic_name)
    assert f'topic "{topic_name}" with 3 partitions:' in out
    for partition in range(3):
        assert f"partition {partition}, leader 1, replicas: 1, isrs: 1" in out


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_and_consume_with_keys_and_headers(broker, topic_name, codec):
    lines = "".join(f"key{i}:value {i}\n" for i in range(100))
    kcat(broker, "-P", "-t", topic_name, "-K:", "-H", "origin=kcat", "-z", codec, stdin=lines.encode())
    out = kcat(broker, "-C", "-t", topic_name, "-o", "beginning", "-e", "-f", "%o|%k|%s|%h\n")
    assert out.splitlines() == [f"{i}|key{i}|value {i}|origin=kcat" for i in range(100)]


def test_consume_from_a_timestamp(broker, topic_name):
    kcat(broker, "-P", "-t", topic_name, stdin=b"early\n")
    time.sleep(0.05)
    middle_ms = int(time.time() * 1000)
    time.sleep(0.05)
    kcat(broker, "-P", "-t", topic_name, stdin=b"late\n")
    out = kcat(broker, "-C", "-t", topic_name, "-o", f"s@{middle_ms}", "-e", "-f", "%s\n")
    assert out.splitlines() == ["late"]


def test_null_keys_and_values_and_explicit_partitions(broker, topic_name):
    create_topic(broker, topic_name, 2)
    # -Z sends an empty key or value as null.
    lines = b"k0:v0\n:only-value\nonly-key:\nk3:v3\n"
    kcat(broker, "-P", "-t", topic_name, "-p", "1", "-K:", "-Z", stdin=lines)
    out = kcat(broker, "-C", "-t", topic_name, "-p", "1", "-o", "beginning", "-e",
               "-f", "%p %o %K %S %k|%s\n")
    # %K and %S are the key and value lengths, -1 for null.
    assert out.splitlines() == [
        "1 0 2 2 k0|v0",
        "1 1 -1 10 |only-value",
        "1 2 8 -1 only-key|",
        "1 3 2 2 k3|v3",
    ]
    assert kcat(broker, "-C", "-t", topic_name, "-p", "0", "-o", "beginning", "-e") == ""


@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
def test_consume_from_an_offset_and_the_end(broker, topic_name, isolation):
    kcat(broker, "-P", "-t", topic_name, "-p", "0",
         stdin="".join(f"m{i}\n" for i in range(20)).encode())
    setting = f"isolation.level={isolation}"
    out = kcat(broker, "-C", "-t", topic_name, "-p", "0", "-o", "15", "-e", "-X", setting,
               "-f", "%o:%s\n")
    assert out.splitlines() == [f"{i}:m{i}" for i in range(15, 20)]
    # A negative offset counts back from the end (ListOffsets latest).
    out = kcat(broker, "-C", "-t", topic_name, "-p", "0", "-o", "-3", "-e", "-X", setting,
               "-f", "%o\n")
    assert out.split() == ["17", "18", "19"]
    out = kcat(broker, "-C", "-t", topic_name, "-p", "0", "-o", "end", "-e", "-X", setting)
    assert out == ""


@pytest.mark.parametrize(
    "settings",
    [["acks=0"], ["acks=1"], ["acks=all"], ["enable.idempotence=true", "compression.codec=zstd"]],
    ids=["acks0", "acks1", "acksall", "idempotent"],
)
def test_acks_and_idempotence_on_the_old_librdkafka(broker, topic_name, settings):
    config = [arg for setting in settings for arg in ("-X", setting)]
    lines = "".join(f"k{i}:v{i}\n" for i in range(100)).encode()
    kcat(broker, "-P", "-t", topic_name, "-p", "0", "-K:", *config, stdin=lines)
    want = [f"{i} k{i} v{i}" for i in range(100)]
    # With acks=0 kcat is done once the bytes are sent, maybe before the
    # broker committed them: read again until all are there (or 10 s).
    deadline = time.time() + 10
    while True:
        out = kcat(broker, "-C", "-t", topic_name, "-p", "0", "-o", "beginning", "-e",
                   "-f", "%o %k %s\n").splitlines()
        if len(out) >= len(want) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert out == want
