"""`runnel consume --group` as a real group member, and `runnel group
list|describe|reset-offsets|delete`, including the refusals of a group that
still has members."""

import subprocess

from conftest import BINARY
from test_cli import runnel
from test_groups import Member, produce, wait_until


def lines(result):
    return result.stdout.decode().splitlines()


def test_consume_with_a_group_commits_what_it_printed(broker, topic_name):
    assert runnel(broker, "topic", "create", topic_name, "-p", "3").returncode == 0
    produce(broker.bootstrap, topic_name, range(30))
    group = f"g-{topic_name}"
    first = runnel(broker, "consume", topic_name, "--group", group, "-e")
    assert first.returncode == 0, first.stderr
    assert sorted(map(int, lines(first))) == list(range(30))
    # The group committed what was printed: a second run has nothing to
    # print, and after more records, only those.
    again = runnel(broker, "consume", topic_name, "--group", group, "-e")
    assert again.returncode == 0 and lines(again) == []
    produce(broker.bootstrap, topic_name, range(30, 36))
    more = runnel(broker, "consume", topic_name, "--group", group, "-e")
    assert sorted(map(int, lines(more))) == list(range(30, 36))

    listed = runnel(broker, "group", "list")
    assert f"{group}\tEmpty" in listed.stdout.decode()
    described = runnel(broker, "group", "describe", group).stdout.decode()
    assert f"group {group}: Empty" in described
    rows = [line.split("\t") for line in described.splitlines() if line.startswith(topic_name)]
    assert len(rows) == 3
    assert sum(int(row[2]) for row in rows) == 36, "committed offsets add up"
    assert all(row[4] == "0" for row in rows), "no lag"

    # Back to the start: the next run prints everything again.
    reset = runnel(broker, "group", "reset-offsets", group, "--topic", topic_name, "--to-earliest")
    assert reset.returncode == 0, reset.stderr
    replay = runnel(broker, "consume", topic_name, "--group", group, "-e")
    assert sorted(map(int, lines(replay))) == list(range(36))
    to_offset = runnel(broker, "group", "reset-offsets", group, "-t", topic_name, "--to-offset", "0")
    assert to_offset.returncode == 0
    to_latest = runnel(broker, "group", "reset-offsets", group, "-t", topic_name, "--to-latest")
    assert to_latest.returncode == 0
    future = runnel(
        broker, "group", "reset-offsets", group, "-t", topic_name, "--to-datetime", "2999-01-01T00:00:00Z"
    )
    assert future.returncode == 0
    bad = runnel(broker, "group", "reset-offsets", group, "-t", topic_name, "--to-datetime", "soon")
    assert bad.returncode == 2 and b"--to-datetime" in bad.stderr

    deleted = runnel(broker, "group", "delete", group)
    assert deleted.returncode == 0, deleted.stderr
    gone = runnel(broker, "group", "delete", group)
    assert gone.returncode == 1 and b"does not exist" in gone.stderr


def test_an_active_group_is_neither_reset_nor_deleted(broker, topic_name, tmp_path):
    assert runnel(broker, "topic", "create", topic_name, "-p", "2").returncode == 0
    group = f"g-{topic_name}"
    member = Member("confluent", broker.bootstrap, topic_name, group, tmp_path)
    try:
        wait_until(lambda: member.assignment(), 30, "the member to join")
        reset = runnel(broker, "group", "reset-offsets", group, "-t", topic_name, "--to-earliest")
        assert reset.returncode == 1
        assert b"active member" in reset.stderr and b"\n" == reset.stderr[-1:]
        deleted = runnel(broker, "group", "delete", group)
        assert deleted.returncode == 1 and b"NON_EMPTY_GROUP" in deleted.stderr
        described = runnel(broker, "group", "describe", group).stdout.decode()
        assert "Stable (consumer range), 1 member(s)" in described
        assert f"{topic_name}-0,{topic_name}-1" in described
    finally:
        member.stop()
    # The tool stops after -n records and leaves the group at once: no
    # member is left to wait for.
    produce(broker.bootstrap, topic_name, range(10))
    other = f"{group}-tool"
    tool = subprocess.run(
        [str(BINARY), "consume", topic_name, "--group", other, "-b", broker.bootstrap, "-n", "10"],
        capture_output=True,
        timeout=30,
    )
    assert tool.returncode == 0, tool.stderr
    assert sorted(map(int, tool.stdout.decode().split())) == list(range(10))
    described = runnel(broker, "group", "describe", other).stdout.decode()
    assert f"group {other}: Empty" in described
