"""kcat, built on Debian's librdkafka 2.0.2: the old librdkafka must work too."""

import subprocess
import time

import pytest


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
