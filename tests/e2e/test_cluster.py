"""Three real nodes on loopback: partitions replicated on all three, and a
partition leader killed with SIGKILL between two rounds of writes. Nothing
acknowledged is lost or duplicated, and offsets stay contiguous."""

import signal
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, free_port, free_port_block


def start_cluster(tmp_path, extra_args=()):
    """Three nodes on loopback, each given the others with --peers."""
    ids = [1, 2, 3]
    rpc = {i: free_port() for i in ids}
    kafka = {i: free_port() for i in ids}
    nodes = {}
    for i in ids:
        peers = ",".join(
            f"{j}@127.0.0.1:{rpc[j]}=127.0.0.1:{kafka[j]}" for j in ids if j != i
        )
        node = Broker(
            tmp_path / f"n{i}",
            tmp_path / f"n{i}.log",
            ["--node-id", str(i), "--peers", peers, *extra_args],
        )
        node.port = kafka[i]
        node.rpc_port = rpc[i]
        nodes[i] = node
    for node in nodes.values():
        node.start(rpc_port=node.rpc_port, wait=False)
    for node in nodes.values():
        node.wait_listening()
    return nodes


def stop_cluster(nodes):
    for node in nodes.values():
        if node.process is not None:
            assert node.stop() == 0, node.log()


@pytest.fixture
def cluster(tmp_path):
    nodes = start_cluster(tmp_path)
    yield nodes
    stop_cluster(nodes)


def bootstrap(nodes):
    return ",".join(node.bootstrap for node in nodes.values() if node.alive())


def leaders(nodes, topic, timeout_s=10):
    """Each partition's leader, once every partition has one as the node
    asked knows it (a node may learn of a new partition's leader a moment
    after CreateTopics is answered, as in Kafka)."""
    deadline = time.time() + timeout_s
    while True:
        metadata = AdminClient({"bootstrap.servers": bootstrap(nodes)}).list_topics(topic, timeout=10)
        found = {p: meta.leader for p, meta in metadata.topics[topic].partitions.items()}
        if all(leader >= 0 for leader in found.values()) or time.time() > deadline:
            return found
        time.sleep(0.2)


def test_a_partition_leader_dies_and_nothing_acknowledged_is_lost(cluster, topic_name):
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    admin.create_topics([NewTopic(topic_name, 3, 3)])[topic_name].result(30)
    before = leaders(cluster, topic_name)
    assert set(before.values()) <= {1, 2, 3}
    producer = Producer(
        {
            "bootstrap.servers": bootstrap(cluster),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "message.timeout.ms": 60000,
        }
    )
    acked = []

    def on_delivery(error, message):
        if error is None:
            acked.append((message.partition(), message.offset(), int(message.value())))

    for i in range(300):
        producer.produce(topic_name, value=b"%d" % i, partition=i % 3, on_delivery=on_delivery)
    assert producer.flush(30) == 0
    victim = before[1]
    cluster[victim].process.send_signal(signal.SIGKILL)
    cluster[victim].process.wait()
    cluster[victim].process = None
    for i in range(300, 600):
        producer.produce(topic_name, value=b"%d" % i, partition=i % 3, on_delivery=on_delivery)
    assert producer.flush(60) == 0
    assert len(acked) == 600
    after = leaders({k: v for k, v in cluster.items() if v.alive()}, topic_name)
    assert after[1] != victim, "partition 1 has a new leader"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap(cluster),
            "group.id": "unused",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic_name, p, 0) for p in range(3)])
    seen = []
    deadline = time.time() + 30
    while len(seen) < 600 and time.time() < deadline:
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            seen.append((message.partition(), message.offset(), int(message.value())))
    consumer.close()
    # Every acknowledged message once, at the offset it was acknowledged at,
    # and offsets contiguous per partition.
    assert sorted(seen) == sorted(acked)
    for partition in range(3):
        offsets = sorted(o for p, o, _ in seen if p == partition)
        assert offsets == list(range(len(offsets)))
        values = [v for p, o, v in sorted(seen) if p == partition]
        assert values == list(range(partition, 600, 3))


def test_runnel_dev_and_cluster_status(tmp_path):
    import os
    import subprocess

    from conftest import BINARY

    # runnel dev takes three consecutive ports from each base.
    kafka_port = free_port_block(6)
    rpc_port = kafka_port + 3
    dev = subprocess.Popen(
        [
            str(BINARY), "dev", "--nodes", "3", "--data-dir", str(tmp_path / "dev"),
            "--kafka-port", str(kafka_port), "--rpc-port", str(rpc_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        first_line = dev.stdout.readline().decode()
        assert "3-node cluster is up" in first_line, first_line
        bootstrap = f"127.0.0.1:{kafka_port}"

        def status():
            out = subprocess.run(
                [str(BINARY), "cluster", "status", "-b", bootstrap],
                capture_output=True, timeout=30,
            )
            assert out.returncode == 0, out.stderr
            return out.stdout.decode()

        created = subprocess.run(
            [str(BINARY), "topic", "create", "st", "-p", "3", "-r", "3", "-b", bootstrap],
            capture_output=True, timeout=60,
        )
        assert created.returncode == 0, created.stderr
        # A new partition's leader serves (and shows) once it has committed
        # an entry of its term, a moment after CreateTopics is answered.
        deadline = time.time() + 10
        healthy = status()
        while "0 offline" not in healthy and time.time() < deadline:
            time.sleep(0.2)
            healthy = status()
        assert healthy.count(" up,") == 3
        assert "3 partitions: 0 under-replicated, 0 offline" in healthy
        victim = subprocess.run(
            ["pgrep", "-f", f"kafka-addr 127.0.0.1:{kafka_port + 2}"], capture_output=True
        ).stdout.split()
        assert victim, "node 3's process"
        os.kill(int(victim[0]), signal.SIGKILL)
        deadline = time.time() + 20
        degraded = status()
        while "DOWN" not in degraded or " 0 under-replicated" in degraded:
            assert time.time() < deadline, degraded
            time.sleep(0.5)
            degraded = status()
        assert "node 3" in degraded and "DOWN" in degraded
        assert "0 offline" in degraded, "every partition has a leader among the others"
    finally:
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=20) == 0


def test_writes_go_on_through_kills_and_a_restart(cluster, topic_name):
    """Issue 5's scenario: 6 partitions replicated 3 ways, an idempotent
    acks=all producer and a consumer running throughout; SIGKILL the leader
    of some partitions, restart it, SIGKILL another node. Every acknowledged
    message is consumed exactly once at its acknowledged offset, in order per
    partition, and writes are acknowledged again within seconds of each kill."""
    import threading

    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    admin.create_topics([NewTopic(topic_name, 6, 3)])[topic_name].result(30)
    servers = ",".join(node.bootstrap for node in cluster.values())
    producer = Producer(
        {
            "bootstrap.servers": servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 120000,
        }
    )
    acked, ack_times, errors = [], [], []
    consumed = []
    stop_consuming = threading.Event()

    def on_delivery(error, message):
        if error is not None:
            errors.append(error)
        else:
            acked.append((message.partition(), message.offset(), int(message.value())))
            ack_times.append(time.time())

    def consume():
        consumer = Consumer(
            {"bootstrap.servers": servers, "group.id": "unused", "enable.auto.commit": False}
        )
        consumer.assign([TopicPartition(topic_name, p, 0) for p in range(6)])
        while not stop_consuming.is_set():
            message = consumer.poll(0.1)
            if message is not None and message.error() is None:
                consumed.append((message.partition(), message.offset(), int(message.value())))
        consumer.close()

    reader = threading.Thread(target=consume)
    reader.start()
    sent = 0

    def produce_for(seconds):
        nonlocal sent
        end = time.time() + seconds
        while time.time() < end:
            producer.produce(topic_name, value=b"%d" % sent, partition=sent % 6, on_delivery=on_delivery)
            sent += 1
            producer.poll(0.002)

    def kill(node_id):
        node = cluster[node_id]
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        node.process = None
        return time.time()

    def first_ack_after(moment):
        later = [t for t in ack_times if t > moment]
        return min(later) - moment if later else None

    produce_for(2)
    first = leaders(cluster, topic_name)[0]
    killed_at = kill(first)
    produce_for(4)
    cluster[first].start(rpc_port=cluster[first].rpc_port)
    produce_for(3)
    second = next(i for i in cluster if i != first)
    second_killed_at = kill(second)
    produce_for(4)
    assert producer.flush(120) == 0
    assert errors == []
    for moment in (killed_at, second_killed_at):
        delay = first_ack_after(moment)
        assert delay is not None and delay < 8, f"writes acknowledged again after {delay} s"
    deadline = time.time() + 30
    while len(set(consumed)) < len(acked) and time.time() < deadline:
        time.sleep(0.2)
    stop_consuming.set()
    reader.join()
    assert len(acked) == sent
    # Exactly once, at the acknowledged offset.
    assert len(consumed) == len(set(consumed)), "a message was delivered twice"
    assert sorted(consumed) == sorted(acked)
    for partition in range(6):
        mine = sorted(o for p, o, _ in acked if p == partition)
        assert mine == list(range(len(mine))), "contiguous offsets"
        in_order = [v for p, o, v in sorted(acked) if p == partition]
        assert in_order == sorted(in_order), "order per partition"


def test_leadership_spreads_and_comes_back_to_a_returning_node(cluster, topic_name):
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    admin.create_topics([NewTopic(topic_name, 6, 3)])[topic_name].result(30)

    def preferred_lead(nodes, timeout_s):
        """Waits until every partition is led by its first replica."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            client = AdminClient({"bootstrap.servers": bootstrap(nodes)})
            partitions = client.list_topics(topic_name, timeout=10).topics[topic_name].partitions
            if all(p.leader == p.replicas[0] for p in partitions.values()):
                return {p: meta.leader for p, meta in partitions.items()}
            time.sleep(0.5)
        raise AssertionError(f"leaders did not settle on the preferred replicas: {partitions}")

    spread = preferred_lead(cluster, 30)
    assert sorted(spread.values()) == [1, 1, 2, 2, 3, 3], "two partitions led by each node"
    cluster[1].process.send_signal(signal.SIGKILL)
    cluster[1].process.wait()
    cluster[1].process = None
    time.sleep(3)
    survivors = {k: v for k, v in cluster.items() if v.alive()}
    moved = leaders(survivors, topic_name)
    assert 1 not in moved.values(), "node 1's partitions moved away"
    cluster[1].start(rpc_port=cluster[1].rpc_port)
    back = preferred_lead(cluster, 40)
    assert sorted(back.values()) == [1, 1, 2, 2, 3, 3], "node 1 leads its partitions again"


def test_a_flood_of_peer_connections_is_bounded(cluster, topic_name):
    """More connections to a node's peer port than PEER_CONNECTIONS_INBOUND_MAX
    (256): the extra ones are closed with a log line, the node keeps serving,
    and the cluster works once they go."""
    import socket

    node = cluster[1]
    flood = []
    try:
        for _ in range(300):
            flood.append(socket.create_connection(("127.0.0.1", node.rpc_port), timeout=5))
        deadline = time.time() + 10
        while "too many inbound peer connections" not in node.log():
            assert time.time() < deadline, node.log()
            time.sleep(0.1)
        assert node.alive()
    finally:
        for connection in flood:
            connection.close()
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    admin.create_topics([NewTopic(topic_name, 1, 3)])[topic_name].result(30)
    producer = Producer({"bootstrap.servers": bootstrap(cluster), "acks": "all"})
    delivered = []
    producer.produce(topic_name, b"after the flood", on_delivery=lambda e, m: delivered.append(e))
    assert producer.flush(30) == 0
    assert delivered == [None]
