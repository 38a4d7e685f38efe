"""`runnel bench` against a real broker: a short run writes a complete JSON
report in which every produced message was acknowledged and consumed once
(checked again by reading the topic with another client), and a run that
loses its broker counts the failures and exits non-zero. No timing is
asserted: the figures depend on the machine."""

import json
import subprocess
import time

from conftest import BINARY


def bench(broker, tmp_path, *args, timeout=120):
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            str(BINARY),
            "bench",
            "--bootstrap",
            broker.bootstrap,
            "--baseline-dir",
            str(tmp_path),
            "--baseline-secs",
            "0.2",
            "--report",
            str(report),
            *args,
        ],
        capture_output=True,
        timeout=timeout,
    )
    return done, (json.loads(report.read_text()) if report.exists() else None)


def assert_latency(summary):
    assert summary is not None and summary["count"] > 0
    for key in ("p50_ms", "p99_ms", "p99_9_ms", "max_ms"):
        assert summary[key] >= 0
    assert summary["p50_ms"] <= summary["p99_ms"] <= summary["p99_9_ms"] <= summary["max_ms"]


def test_a_short_run_reports_every_message_acknowledged_and_consumed(broker, topic_name, tmp_path):
    done, report = bench(broker, tmp_path, "-t", topic_name, "-p", "3", "-d", "2", "--acks", "all")
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    out = done.stdout.decode()
    assert "baseline: disk" in out and "produce:" in out and "end-to-end latency" in out
    assert out.count("] sent") >= 1, "a progress line each second"
    assert len(report["timeline"]) >= 1 and "acknowledged" in report["timeline"][0]

    assert report["revision"]["commit"], "the git revision is recorded"
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["memory_bytes"] > 0
    assert machine["kernel"]["release"] and machine["disk"]["file_system"]
    config = report["config"]
    assert config["topic"] == topic_name and config["acks"] == "all"
    assert config["message_bytes"] == 1024 and config["duration_secs"] == 2
    baseline = report["baseline"]
    assert [row["write_bytes"] for row in baseline["disk_fdatasync"]] == [4096, 65536, 1 << 20, 4 << 20]
    assert all(row["appends_per_s"] > 0 for row in baseline["disk_fdatasync"])
    assert baseline["loopback"]["bandwidth_mb_per_s"] > 0

    produce, consume = report["produce"], report["consume"]
    assert produce["sent"] > 0
    assert produce["acknowledged"] == produce["sent"]
    assert produce["errors"] == 0 and report["errors"]["total"] == 0
    assert produce["acknowledged_bytes"] == produce["acknowledged"] * 1024
    assert_latency(produce["latency"])
    assert consume["consumed"] == produce["acknowledged"]
    assert_latency(consume["end_to_end_latency"])
    delivery = report["delivery"]
    assert delivery == {
        "verified": True,
        "lost": 0,
        "duplicates": 0,
        "consumed_unacknowledged": 0,
        "unfinished_partitions": [],
        "ok": True,
    }
    assert report["client_cpu"]["user_s"] + report["client_cpu"]["system_s"] > 0
    assert report["versus_limits"]["produce_of_disk_ceiling"] > 0
    assert report["topic"]["partitions"] == 3 and report["topic"]["created"] is True


def test_keys_rate_and_compression_with_an_independent_count(broker, topic_name, tmp_path):
    done, report = bench(
        broker, tmp_path,
        "-t", topic_name, "-p", "2", "-d", "2", "--rate", "1500", "--keys", "zipf",
        "--key-count", "50", "-z", "lz4", "--acks", "1", "--producers", "2", "--consumers", "2",
        "--message-bytes", "200", "--skip-baseline",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert report["baseline"] is None
    acknowledged = report["produce"]["acknowledged"]
    assert acknowledged == report["produce"]["sent"] > 0
    assert report["consume"]["consumed"] == acknowledged and report["delivery"]["ok"]
    # Another client reads the topic: the bench's counts are real records.
    total = 0
    for partition in (0, 1):
        read = subprocess.run(
            [str(BINARY), "consume", topic_name, "-p", str(partition), "-e", "-f", "%k\\n",
             "--bootstrap", broker.bootstrap],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert read.returncode == 0, read.stderr
        keys = read.stdout.decode().split()
        assert all(key.startswith("key-") for key in keys)
        total += len(keys)
    assert total == acknowledged


def test_usage_errors_are_one_line_with_exit_code_2(broker, tmp_path):
    done, report = bench(broker, tmp_path, "--message-bytes", "10")
    assert done.returncode == 2 and report is None
    assert len(done.stderr.decode().strip().splitlines()) == 1


def test_losing_the_broker_counts_errors_and_exits_nonzero(fresh_broker, topic_name, tmp_path):
    report_path = tmp_path / "report.json"
    process = subprocess.Popen(
        [str(BINARY), "bench", "--bootstrap", fresh_broker.bootstrap, "-t", topic_name,
         "-d", "4", "--skip-baseline", "--drain-secs", "3", "--report", str(report_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(2)
    fresh_broker.process.kill()
    fresh_broker.process.wait()
    fresh_broker.process = None
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, out.decode() + err.decode()
    report = json.loads(report_path.read_text())
    assert report["errors"]["total"] > 0 and report["errors"]["kinds"]
    assert report["delivery"]["ok"] is False
    assert b"errors:" in out
