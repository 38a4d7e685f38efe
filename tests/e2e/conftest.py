"""Fixtures: a real `runnel serve` process on a free port with its own data
directory, stopped with SIGTERM (which must exit 0) after the tests."""

import os
import random
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("RUNNEL_BIN", ROOT / "target" / "release" / "runnel"))
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10


# Ports for the brokers come from below Linux's ephemeral range (32768 and
# up), so that no outgoing connection (a client's, or one node's to another)
# can take a port between the check here and the broker binding it.
PORT_RANGE = (20000, 32000)


def free_port_block(count):
    """The first of `count` consecutive ports that are free now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        held = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports in {PORT_RANGE}")


def free_port():
    return free_port_block(1)


class Broker:
    """One broker process; `start` and `stop` may be called again to restart
    it on the same data directory."""

    def __init__(self, data_dir, log_path, extra_args=()):
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.process = None

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self, rpc_port=None, wait=True):
        assert BINARY.exists(), f"{BINARY} is missing: cargo build --release --bin runnel"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                str(BINARY),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--kafka-addr",
                self.bootstrap,
                "--rpc-addr",
                f"127.0.0.1:{rpc_port or free_port()}",
                *self.extra_args,
            ],
            stdout=log,
            stderr=log,
        )
        if wait:
            self.wait_listening()

    def wait_listening(self):
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            assert self.process.poll() is None, f"broker exited: {self.log()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    # A loopback connect to a free ephemeral port can be given
                    # that port as its source and open to itself (TCP's
                    # simultaneous open): that is not the broker listening.
                    if sock.getsockname() != sock.getpeername():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"broker did not listen within {START_TIMEOUT_S}s: {self.log()}")

    def stop(self):
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"broker did not stop within {STOP_TIMEOUT_S}s after SIGTERM")
        self.process = None
        return code

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def log(self):
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def broker(tmp_path_factory, request):
    base = tmp_path_factory.mktemp("broker")
    instance = Broker(base / "data", base / "broker.log")
    instance.start()
    yield instance
    code = instance.stop()
    if code != 0:
        print(instance.log())
    assert code == 0, f"SIGTERM must stop the broker with exit code 0, not {code}"


@pytest.fixture
def fresh_broker(tmp_path):
    instance = Broker(tmp_path / "data", tmp_path / "broker.log")
    instance.start()
    yield instance
    if instance.process is not None:
        assert instance.stop() == 0


@pytest.fixture
def topic_name():
    return "t-" + uuid.uuid4().hex[:10]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, show the end of the broker's log."""
    outcome = yield
    report = outcome.get_result()
    if report.when in ("setup", "call") and report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            brokers = value.values() if isinstance(value, dict) else [value]
            for instance in brokers:
                if isinstance(instance, Broker):
                    report.sections.append((f"log of broker {name} ({instance.bootstrap})", instance.log()))


def rss_kib(broker):
    """The broker process's resident memory, from /proc."""
    for line in Path(f"/proc/{broker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")
