"""librdkafka (through confluent-kafka) producing as fast as it can, for
comparison with `runnel bench` against the same broker: throughput and the
client's CPU time. Producer only, no delivery check beyond counting the
delivery reports.

    target/e2e-venv/bin/python scripts/bench-librdkafka.py -b 127.0.0.1:9092 -t topic -d 30

The settings mirror `runnel bench`'s defaults: 1 KiB values, acks=all,
64 KiB batches, linger 5 ms, 32 MiB of buffer, no compression, no keys.
"""

import argparse
import json
import os
import resource
import time

from confluent_kafka import Producer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-b", "--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("-t", "--topic", default="runnel-bench")
    parser.add_argument("-d", "--duration-secs", type=float, default=10)
    parser.add_argument("-s", "--message-bytes", type=int, default=1024)
    parser.add_argument("--acks", default="all")
    parser.add_argument("--report")
    args = parser.parse_args()

    delivered = [0, 0]  # ok, failed

    def on_delivery(error, _message):
        delivered[1 if error else 0] += 1

    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": args.acks,
        "linger.ms": 5,
        "batch.size": 65536,
        "queue.buffering.max.kbytes": 32768,
        "queue.buffering.max.messages": 1000000,
        "enable.idempotence": False,
        "max.in.flight.requests.per.connection": 16,
    })
    value = os.urandom(args.message_bytes // 2).hex().encode()[: args.message_bytes]
    sent = 0
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    deadline = started + args.duration_secs
    while time.monotonic() < deadline:
        for _ in range(1000):
            try:
                producer.produce(args.topic, value, on_delivery=on_delivery)
                sent += 1
            except BufferError:
                producer.poll(0.001)
        producer.poll(0)
    producer.flush(60)
    seconds = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    result = {
        "client": "librdkafka " + __import__("confluent_kafka").libversion()[0],
        "sent": sent,
        "acknowledged": delivered[0],
        "failed": delivered[1],
        "seconds": seconds,
        "messages_per_s": delivered[0] / seconds,
        "mb_per_s": delivered[0] * args.message_bytes / seconds / 1e6,
        "client_cpu_s": cpu,
        "client_cores_used": cpu / seconds,
    }
    print(json.dumps(result, indent=2))
    if args.report:
        with open(args.report, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
