"""Moving a partition's replicas on a real three-node cluster: the replica
goes from one node to another while a producer writes, every acknowledged
record is read back at its offset afterwards, and the node the partition
left deletes its copy."""

import subprocess
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import BINARY
from test_cluster import bootstrap, cluster, start_cluster, stop_cluster  # noqa: F401 (a fixture)

METADATA_GROUP_DIR = "00000000000000000000"


def runnel(nodes, *args):
    return subprocess.run(
        [str(BINARY), *args, "--bootstrap", bootstrap(nodes)],
        capture_output=True,
        text=True,
        timeout=60,
    )


OFFSETS_GROUP_BASE = 1 << 40


def partition_files(node):
    """Files of partition replicas (not the metadata group's, not the
    offsets topic's, whose groups are numbered from 2^40, and not the
    tombstone a deleted replica leaves, docs/storage.md) in a node's data."""
    groups = node.data_dir / "groups"
    if not groups.exists():
        return []
    return sorted(
        str(path.relative_to(groups))
        for path in groups.rglob("*")
        if path.is_file()
        and path.relative_to(groups).parts[0] != METADATA_GROUP_DIR
        and int(path.relative_to(groups).parts[0]) < OFFSETS_GROUP_BASE
        and path.name != "left"
    )


def produce(nodes, topic, values):
    producer = Producer(
        {
            "bootstrap.servers": bootstrap(nodes),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    acknowledged = {}

    def delivered(error, message):
        assert error is None, error
        acknowledged[message.value().decode()] = message.offset()

    for value in values:
        producer.produce(topic, value.encode(), partition=0, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0
    return acknowledged


def test_a_partition_moves_to_another_node_and_nothing_is_lost(cluster, topic_name):  # noqa: F811
    admin = AdminClient({"bootstrap.servers": bootstrap(cluster)})
    admin.create_topics([NewTopic(topic_name, 1, 2)])[topic_name].result(30)
    metadata = admin.list_topics(topic_name, timeout=10)
    replicas = list(metadata.topics[topic_name].partitions[0].replicas)
    assert len(replicas) == 2
    leaving = replicas[0]
    arriving = ({1, 2, 3} - set(replicas)).pop()
    target = [arriving, replicas[1]]

    acknowledged = produce(cluster, topic_name, [f"before-{i}" for i in range(300)])
    assert len(partition_files(cluster[leaving])) > 0

    moved = runnel(
        cluster, "topic", "reassign", topic_name, "-p", "0",
        "--replicas", ",".join(map(str, target)),
    )
    assert moved.returncode == 0, moved.stderr
    assert f"moving {topic_name}-0 to replicas" in moved.stdout
    acknowledged.update(produce(cluster, topic_name, [f"during-{i}" for i in range(200)]))

    deadline = time.monotonic() + 60
    while True:
        metadata = admin.list_topics(topic_name, timeout=10)
        partition = metadata.topics[topic_name].partitions[0]
        moves = runnel(cluster, "topic", "moves")
        settled = (
            list(partition.replicas) == target
            and partition.leader == arriving
            and "no partition is moving" in moves.stdout
            and partition_files(cluster[leaving]) == []
        )
        if settled:
            break
        assert time.monotonic() < deadline, (
            f"the move did not finish: replicas {partition.replicas} leader "
            f"{partition.leader}, moves: {moves.stdout!r}, files left on n{leaving}: "
            f"{partition_files(cluster[leaving])}"
        )
        time.sleep(0.5)
    assert len(partition_files(cluster[arriving])) > 0

    acknowledged.update(produce(cluster, topic_name, [f"after-{i}" for i in range(100)]))
    assert sorted(acknowledged.values()) == list(range(600))

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap(cluster),
            "group.id": "unused",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic_name, 0, 0)])
    read = {}
    deadline = time.monotonic() + 30
    while len(read) < 600 and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        read[message.offset()] = message.value().decode()
    consumer.close()
    assert read == {offset: value for value, offset in acknowledged.items()}


def test_replicas_spread_over_racks(tmp_path, topic_name):
    """Nodes 1 and 2 share rack a, node 3 is alone in rack b: with two
    replicas, every partition has one in each rack, and the brokers report
    their racks to clients."""
    nodes = start_cluster(tmp_path, ["--racks", "1=a,2=a,3=b"])
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap(nodes)})
        admin.create_topics([NewTopic(topic_name, 6, 2)])[topic_name].result(30)
        metadata = admin.list_topics(topic_name, timeout=10)
        for partition in metadata.topics[topic_name].partitions.values():
            replicas = set(partition.replicas)
            assert len(replicas) == 2 and 3 in replicas, (partition.id, replicas)
        described = admin.describe_cluster().result(10)
        assert {node.id: node.rack for node in described.nodes} == {1: "a", 2: "a", 3: "b"}
    finally:
        stop_cluster(nodes)
