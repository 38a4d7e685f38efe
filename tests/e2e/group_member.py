"""One consumer group member in its own process, so that a test can stop it
(SIGTERM: it leaves the group) or kill it (SIGKILL: its session expires).

    python group_member.py CLIENT BOOTSTRAP TOPIC GROUP [INSTANCE_ID]

CLIENT is "confluent" or "kafka-python". The member commits each record's
offset after it processed it (commit-after-process) and prints one line per
event, flushed at once:

    ASSIGNED p1,p2,...      its partitions after a rebalance
    RECORD p offset value   a record it processed and committed
"""

import os
import signal
import sys

SESSION_TIMEOUT_MS = int(os.environ.get("GROUP_SESSION_TIMEOUT_MS", "6000"))
HEARTBEAT_INTERVAL_MS = 500
stopping = False


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def on_sigterm(_signum, _frame):
    global stopping
    stopping = True


def run_confluent(bootstrap, topic, group, instance_id):
    from confluent_kafka import Consumer, TopicPartition

    assigned = set()

    def on_assign(consumer, partitions):
        assigned.update(p.partition for p in partitions)
        say("ASSIGNED " + ",".join(str(p) for p in sorted(assigned)))

    def on_revoke(consumer, partitions):
        assigned.difference_update(p.partition for p in partitions)
        say("ASSIGNED " + ",".join(str(p) for p in sorted(assigned)))

    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
        "partition.assignment.strategy": os.environ.get("GROUP_ASSIGNOR", "range"),
    }
    if instance_id:
        config["group.instance.id"] = instance_id
    consumer = Consumer(config)
    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    while not stopping:
        message = consumer.poll(0.2)
        if message is None or message.error():
            continue
        consumer.commit(
            offsets=[TopicPartition(topic, message.partition(), message.offset() + 1)],
            asynchronous=False,
        )
        say(f"RECORD {message.partition()} {message.offset()} {message.value().decode()}")
    consumer.close()


def run_kafka_python(bootstrap, topic, group, instance_id):
    from kafka import KafkaConsumer, OffsetAndMetadata
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            pass

        def on_partitions_assigned(self, assigned):
            say("ASSIGNED " + ",".join(str(p.partition) for p in sorted(assigned)))

    config = dict(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    if instance_id:
        config["group_instance_id"] = instance_id
    consumer = KafkaConsumer(**config)
    consumer.subscribe([topic], listener=Listener())
    while not stopping:
        for partition, records in consumer.poll(timeout_ms=200).items():
            for record in records:
                if _kafka_python_3():
                    position = OffsetAndMetadata(record.offset + 1, "", -1)
                else:
                    position = OffsetAndMetadata(record.offset + 1, "")
                consumer.commit({partition: position})
                say(f"RECORD {record.partition} {record.offset} {record.value.decode()}")
    consumer.close()


def _kafka_python_3():
    import kafka

    return int(kafka.__version__.split(".")[0]) >= 3


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    client, bootstrap, topic, group = sys.argv[1:5]
    instance_id = sys.argv[5] if len(sys.argv) > 5 else None
    if client == "confluent":
        run_confluent(bootstrap, topic, group, instance_id)
    else:
        run_kafka_python(bootstrap, topic, group, instance_id)
    say("CLOSED")


if __name__ == "__main__":
    main()
