"""Consumer groups with real clients (issue 6): members in their own
processes (group_member.py) share a topic's partitions, take over those of
a member that leaves or is killed without losing a message
(commit-after-process), committed offsets survive the coordinator's node
being killed, and a static member that restarts within its session gets
its partitions back without a rebalance.

Members use 6 s sessions, so a killed member is noticed within seconds."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import ROOT
from test_cluster import bootstrap, start_cluster, stop_cluster

MEMBER = Path(__file__).with_name("group_member.py")
KAFKA_PYTHON_2 = ROOT / "target" / "e2e-venv-kafka-python-2" / "bin" / "python"
SESSION_S = 6

# (client name for group_member.py, interpreter): kafka-python 2 lives in
# its own virtualenv (run.sh makes it).
CLIENTS = {
    "confluent": ("confluent", sys.executable),
    # Incremental rebalances: members keep what they own and rejoin at once
    # after giving up partitions.
    "confluent-cooperative": ("confluent", sys.executable),
    "kafka-python-3": ("kafka-python", sys.executable),
    "kafka-python-2": ("kafka-python", str(KAFKA_PYTHON_2)),
}


class Member:
    """One group member process and what it printed."""

    def __init__(self, client, bootstrap_servers, topic, group, log_dir, instance=None):
        kind, python = CLIENTS[client]
        name = instance or f"m{time.monotonic_ns()}"
        self.stderr = open(Path(log_dir) / f"{name}.err", "ab")
        env = dict(os.environ)
        if client == "confluent-cooperative":
            env["GROUP_ASSIGNOR"] = "cooperative-sticky"
        self.process = subprocess.Popen(
            [python, str(MEMBER), kind, bootstrap_servers, topic, group]
            + ([instance] if instance else []),
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.split())

    def assignments(self):
        """Every assignment it reported, oldest first."""
        return [
            frozenset(int(p) for p in line[1].split(",")) if len(line) > 1 else frozenset()
            for line in list(self.lines)
            if line and line[0] == "ASSIGNED"
        ]

    def assignment(self):
        found = self.assignments()
        return found[-1] if found else None

    def values(self):
        return [int(line[3]) for line in list(self.lines) if line and line[0] == "RECORD"]

    def leave(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)
        self.reader.join(timeout=5)

    def kill(self):
        self.process.kill()
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stderr.close()

    def log(self):
        return Path(self.stderr.name).read_text(errors="replace")[-2000:]


def wait_until(condition, timeout_s, what):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def shares(members, partitions):
    """Whether the members' current assignments split the partitions
    between them, each member holding some."""
    current = [member.assignment() for member in members]
    if any(not assigned for assigned in current):
        return False
    union = set().union(*current)
    return union == set(range(partitions)) and sum(map(len, current)) == partitions


def create_topic(servers, topic, partitions, replication_factor=1):
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(topic, partitions, replication_factor)])[topic].result(30)


def produce(servers, topic, values):
    producer = Producer({"bootstrap.servers": servers, "acks": "all", "linger.ms": 2})
    for value in values:
        producer.produce(topic, str(value).encode(), key=str(value).encode())
    assert producer.flush(30) == 0, "every message is acknowledged"


def processed(members):
    return [value for member in members for value in member.values()]


@pytest.mark.parametrize("client", list(CLIENTS))
def test_members_share_partitions_and_take_over_without_losing_messages(
    broker, topic_name, tmp_path, client
):
    if client == "kafka-python-2" and not KAFKA_PYTHON_2.exists():
        pytest.skip("tests/e2e/run.sh makes the kafka-python 2 virtualenv")
    create_topic(broker.bootstrap, topic_name, 6)
    group = f"g-{topic_name}"
    members = [Member(client, broker.bootstrap, topic_name, group, tmp_path) for _ in range(3)]
    try:
        wait_until(lambda: shares(members, 6), 30, "three members to share six partitions")
        assert all(len(member.assignment()) == 2 for member in members)
        produced = list(range(120))
        produce(broker.bootstrap, topic_name, produced)
        wait_until(lambda: set(processed(members)) == set(produced), 30, "the first batch")

        # One leaves (SIGTERM: the client closes and sends LeaveGroup).
        members[0].leave()
        wait_until(lambda: shares(members[1:], 6), 30, "two members to take over")
        batch = list(range(120, 240))
        produce(broker.bootstrap, topic_name, batch)
        produced += batch
        wait_until(lambda: set(processed(members)) == set(produced), 30, "the second batch")

        # One is killed: its session expires and the last takes over.
        members[1].kill()
        wait_until(
            lambda: members[2].assignment() == frozenset(range(6)),
            SESSION_S + 20,
            "the last member to take every partition",
        )
        batch = list(range(240, 360))
        produce(broker.bootstrap, topic_name, batch)
        produced += batch
        wait_until(lambda: set(processed(members)) == set(produced), 30, "the third batch")

        # Commit-after-process: a takeover starts at the committed offset,
        # so at most the record in flight at each handover is processed
        # twice, and none is skipped.
        values = processed(members)
        assert set(values) == set(produced), "no message is lost"
        assert len(values) - len(produced) <= 12, f"{len(values) - len(produced)} repeats"
    except AssertionError:
        for member in members:
            print(member.log())
        raise
    finally:
        for member in members:
            member.stop()


@pytest.mark.parametrize("client", ["confluent", "kafka-python-3"])
def test_a_static_member_restarts_and_gets_its_partitions_back_without_a_rebalance(
    broker, topic_name, tmp_path, client
):
    create_topic(broker.bootstrap, topic_name, 4)
    group = f"g-{topic_name}"
    # The first member forms the group and leads it; the second, a
    # follower, is the one that restarts (a restarted leader may rejoin on
    # its own initiative when its fresh metadata differs from what it
    # assigned with, which is the client's choice, not a rebalance the
    # coordinator started).
    leader = Member(client, broker.bootstrap, topic_name, group, tmp_path, instance="static-a")
    members = [leader]
    try:
        wait_until(lambda: leader.assignment() == frozenset(range(4)), 30, "the first member")
        follower = Member(client, broker.bootstrap, topic_name, group, tmp_path, instance="static-b")
        members.append(follower)
        wait_until(lambda: shares([leader, follower], 4), 30, "two static members to share")
        # Whatever rebalances the start took, the group is stable now.
        time.sleep(1)
        before = follower.assignment()
        leader_history = len(leader.assignments())
        follower.kill()
        restarted = Member(client, broker.bootstrap, topic_name, group, tmp_path, instance="static-b")
        members.append(restarted)
        wait_until(lambda: restarted.assignment() is not None, 20, "the restarted member's assignment")
        assert restarted.assignment() == before, "it gets its partitions back"
        # Past the old session's end nothing changes either: the old member
        # id was replaced, not left to expire.
        time.sleep(SESSION_S + 1)
        assert len(leader.assignments()) == leader_history, "the other member never rebalanced"
        assert len(restarted.assignments()) == 1
        produce(broker.bootstrap, topic_name, range(40))
        wait_until(
            lambda: set(restarted.values() + leader.values()) == set(range(40)),
            20,
            "both members to consume",
        )
    except AssertionError:
        for member in members:
            print(member.log())
        raise
    finally:
        for member in members:
            member.stop()


def test_committed_offsets_survive_the_coordinators_node_being_killed(tmp_path, topic_name):
    nodes = start_cluster(tmp_path)
    try:
        servers = bootstrap(nodes)
        create_topic(servers, topic_name, 3, 3)
        produce(servers, topic_name, range(90))
        group = f"g-{topic_name}"
        config = {
            "bootstrap.servers": servers,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_S * 1000,
        }
        consumer = Consumer(config)
        consumer.subscribe([topic_name])
        seen = []
        deadline = time.time() + 30
        while len(seen) < 90 and time.time() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            seen.append(int(message.value()))
            consumer.commit(message=message, asynchronous=False)
        assert sorted(seen) == list(range(90))
        partitions = [TopicPartition(topic_name, p) for p in range(3)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        assert sum(committed.values()) == 90
        admin = AdminClient({"bootstrap.servers": servers})
        description = admin.describe_consumer_groups([group])[group].result(10)
        coordinator = description.coordinator.id
        consumer.close()

        nodes[coordinator].process.kill()
        nodes[coordinator].process.wait()
        nodes[coordinator].process = None
        servers = bootstrap(nodes)

        # A new coordinator, on another node, rebuilt the group's offsets.
        config["bootstrap.servers"] = servers
        consumer = Consumer(config)
        found = {}
        deadline = time.time() + 40
        while found != committed and time.time() < deadline:
            try:
                found = {
                    tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=5)
                }
            except KafkaException:
                time.sleep(0.5)
        assert found == committed, "committed offsets survive the coordinator's node"
        admin = AdminClient({"bootstrap.servers": servers})
        description = admin.describe_consumer_groups([group])[group].result(20)
        assert description.coordinator.id != coordinator

        # The group carries on from them: only new messages are read.
        produce(servers, topic_name, range(90, 120))
        consumer.subscribe([topic_name])
        seen = []
        deadline = time.time() + 40
        while len(seen) < 30 and time.time() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                seen.append(int(message.value()))
        consumer.close()
        assert sorted(seen) == list(range(90, 120))
    finally:
        stop_cluster(nodes)
