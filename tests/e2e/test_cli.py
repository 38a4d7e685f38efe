"""The `runnel` tools: topics, produce from stdin, consume, and exit codes
that say what happened (0 done, 1 the broker refused, 2 usage, 3 no broker)."""

import subprocess

from conftest import BINARY


def runnel(broker, *args, stdin=None, address=None):
    return subprocess.run(
        [str(BINARY), *args, "--bootstrap", address or broker.bootstrap],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def test_topic_lifecycle(broker, topic_name):
    created = runnel(broker, "topic", "create", topic_name, "-p", "3", "-c", "retention.ms=60000")
    assert created.returncode == 0, created.stderr
    listed = runnel(broker, "topic", "list")
    assert topic_name in listed.stdout.decode().split()
    described = runnel(broker, "topic", "describe", topic_name).stdout.decode()
    assert f"topic {topic_name}" in described and "partitions 3" in described
    assert "config retention.ms=60000" in described
    again = runnel(broker, "topic", "create", topic_name)
    assert again.returncode == 1 and b"TOPIC_ALREADY_EXISTS" in again.stderr
    assert runnel(broker, "topic", "delete", topic_name).returncode == 0
    gone = runnel(broker, "topic", "delete", topic_name)
    assert gone.returncode == 1 and b"UNKNOWN_TOPIC_OR_PARTITION" in gone.stderr
    assert len(gone.stderr.decode().strip().splitlines()) == 1, "one clear line"


def test_produce_and_consume_with_keys_headers_and_compression(broker, topic_name):
    assert runnel(broker, "topic", "create", topic_name, "-p", "1").returncode == 0
    lines = "".join(f"k{i}:value {i}\n" for i in range(50)).encode()
    produced = runnel(
        broker, "produce", topic_name, "-K", ":", "-H", "src=cli", "-z", "zstd", stdin=lines
    )
    assert produced.returncode == 0, produced.stderr
    assert b"at offsets 0..49" in produced.stderr
    consumed = runnel(broker, "consume", topic_name, "-e", "-f", "%o %k %v %h\\n")
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.decode().splitlines() == [
        f"{i} k{i} value {i} src=cli" for i in range(50)
    ]
    some = runnel(broker, "consume", topic_name, "-o", "45", "-n", "2", "-f", "%o\\n")
    assert some.stdout.decode().split() == ["45", "46"]


def test_errors_have_exit_codes(broker, topic_name):
    missing = runnel(broker, "consume", "no-such-topic", "-e")
    assert missing.returncode == 1
    assert missing.stderr.decode().startswith("runnel: ")
    unreachable = runnel(broker, "topic", "list", address="127.0.0.1:1")
    assert unreachable.returncode == 3
    usage = subprocess.run([str(BINARY), "produce"], capture_output=True)
    assert usage.returncode == 2
