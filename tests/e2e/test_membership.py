"""Changing the cluster itself on real processes: a fourth node joins a
three-node cluster (`runnel serve --join`, `runnel cluster add-node`) and
takes a partition, then node 1 is removed (`runnel cluster remove-node`):
its replicas move to the others, it leaves, and after it is stopped every
acknowledged record is still read back at its offset."""

import subprocess
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import BINARY, Broker, free_port
from test_cluster import start_cluster, stop_cluster


def runnel(address, *args):
    return subprocess.run(
        [str(BINARY), *args, "--bootstrap", address],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(what, check, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def produce(bootstrap, topic, values):
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"}
    )
    acknowledged = {}

    def delivered(error, message):
        assert error is None, error
        acknowledged[(message.partition(), message.offset())] = message.value().decode()

    for index, value in enumerate(values):
        producer.produce(topic, value.encode(), partition=index % 3, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0
    return acknowledged


def read_all(bootstrap, topic, expected):
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    read = {}
    deadline = time.monotonic() + 60
    while len(read) < expected and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        read[(message.partition(), message.offset())] = message.value().decode()
    consumer.close()
    return read


def test_a_node_joins_and_another_leaves(tmp_path, topic_name):
    nodes = start_cluster(tmp_path)
    joined = None
    try:
        first = ",".join(node.bootstrap for node in nodes.values())
        admin = AdminClient({"bootstrap.servers": first})
        admin.create_topics([NewTopic(topic_name, 3, 3)])[topic_name].result(30)
        acknowledged = produce(first, topic_name, [f"before-{i}" for i in range(150)])

        # Node 4 starts knowing the cluster's nodes, then is added.
        peers = ",".join(
            f"{i}@127.0.0.1:{node.rpc_port}=127.0.0.1:{node.port}" for i, node in nodes.items()
        )
        joined = Broker(
            tmp_path / "n4", tmp_path / "n4.log", ["--node-id", "4", "--join", "--peers", peers]
        )
        joined.rpc_port = free_port()
        joined.start(rpc_port=joined.rpc_port, wait=False)
        added = runnel(
            first, "cluster", "add-node", "4",
            "--rpc-addr", f"127.0.0.1:{joined.rpc_port}",
            "--kafka-addr", joined.bootstrap,
        )
        assert added.returncode == 0, added.stderr
        joined.wait_listening()
        wait_for(
            "node 4 in the cluster",
            lambda: 4 in {n.id for n in admin.describe_cluster().result(10).nodes},
        )

        # It takes a partition and leads it.
        moved = runnel(first, "topic", "reassign", topic_name, "-p", "0", "--replicas", "4,1,2")
        assert moved.returncode == 0, moved.stderr

        def partition_0_on_4():
            partition = admin.list_topics(topic_name, timeout=10).topics[topic_name].partitions[0]
            return list(partition.replicas) == [4, 1, 2] and partition.leader == 4

        wait_for("partition 0 on node 4, led by it", partition_0_on_4)
        everyone = first + "," + joined.bootstrap
        acknowledged.update(produce(everyone, topic_name, [f"joined-{i}" for i in range(150)]))

        # Node 1 leaves: its replicas go elsewhere, then it is out.
        removed = runnel(everyone, "cluster", "remove-node", "1")
        assert removed.returncode == 0, removed.stderr

        # Asked of the nodes that stay: the leaving node's metadata may stop
        # where it was when the metadata group let it go, which can be
        # before the change that moved its replicas away.
        staying = ",".join(node.bootstrap for i, node in nodes.items() if i != 1)
        staying += "," + joined.bootstrap
        staying_admin = AdminClient({"bootstrap.servers": staying})

        def node_1_gone():
            metadata = staying_admin.list_topics(topic_name, timeout=10)
            on_1 = [
                p.id for p in metadata.topics[topic_name].partitions.values() if 1 in p.replicas
            ]
            members = {n.id for n in staying_admin.describe_cluster().result(10).nodes}
            moves = runnel(staying, "topic", "moves").stdout
            return not on_1 and members == {2, 3, 4} and "no partition is moving" in moves

        wait_for("node 1's replicas to move and node 1 to leave", node_1_gone)
        assert nodes[1].stop() == 0, nodes[1].log()
        rest = ",".join(node.bootstrap for i, node in nodes.items() if i != 1)
        rest += "," + joined.bootstrap
        acknowledged.update(produce(rest, topic_name, [f"after-{i}" for i in range(150)]))

        assert read_all(rest, topic_name, len(acknowledged)) == acknowledged
    finally:
        if joined is not None and joined.process is not None:
            joined.stop()
        stop_cluster(nodes)
