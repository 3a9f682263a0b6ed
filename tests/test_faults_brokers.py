"""Each broker stopped and started again under load (issue 13, item 6): JetStream, RabbitMQ, MQTT.

Every test starts a broker process of its own on a free port (never the machine's shared ones),
a subscriber app with its sidecar and a publishing sidecar, and publishes from several clients
while the broker is stopped and started again on the same port with the same data folder. It
checks: publishes during the outage fail with 500 and a message naming the broker, nothing that
was acknowledged is lost, and publishing and delivery resume by themselves. The figures it
measures are printed (``-s``) and summarised in docs/reliability.md.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.pubsub_support import BROKERS, SubscriberApp, running, subscription
from tests.support import free_port, start_sidecar

PUBLISHERS = 4
# How long the broker stays away, and how long each phase of publishing lasts.
OUTAGE = 4.0
BEFORE = 150  # acknowledged publishes before the broker is stopped


class PrivateBroker:
    """A broker process of this test's own, stopped (SIGTERM) and started again on one port."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "broker.log"
        # A restarted RabbitMQ is the same node only under the same name and distribution port:
        # its data folder is per node name, so a new name would start an empty broker whose
        # queues do not exist yet (and lose what a real restart keeps).
        self.node = f"pillion-chaos-{uuid.uuid4().hex[:8]}@localhost"
        self.dist_port = free_port()

    @property
    def url(self) -> str:
        if self.kind == "jetstream":
            return f"nats://127.0.0.1:{self.port}"
        if self.kind == "mqtt3":
            return f"tcp://127.0.0.1:{self.port}"
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _command(self) -> tuple[list[str], dict[str, str]]:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        if self.kind == "jetstream":
            server = shutil.which("nats-server")
            assert server, "nats-server is needed: apt-get install nats-server"
            return [server, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(data)], {}
        if self.kind == "mqtt3":
            server = shutil.which("mosquitto")
            assert server, "mosquitto is needed: apt-get install mosquitto"
            config = self.workdir / "mosquitto.conf"
            config.write_text(
                # Run as root, mosquitto would switch to its own user, which cannot write here.
                f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
                f"persistence true\npersistence_location {data}/\nmax_queued_messages 100000\n"
            )
            return [server, "-c", str(config)], {}
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        assert os.path.exists(server), "rabbitmq-server is needed: apt-get install rabbitmq-server"
        config = self.workdir / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        plugins = self.workdir / "plugins"
        plugins.write_text("[].\n")
        env = {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_MNESIA_BASE": str(data),
            "RABBITMQ_LOG_BASE": str(self.workdir),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbit.pid"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
        }
        return [server], env

    def start(self, within: float = 60) -> float:
        """Start it and wait for its port; the seconds that took."""
        command, env = self._command()
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )
        while True:
            assert self.proc.poll() is None, f"the {self.kind} broker exited:\n{self.log.read_text()[-3000:]}"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            assert time.monotonic() - started < within, f"the {self.kind} broker did not start in {within}s"
            time.sleep(0.1)
        if self.kind == "rabbitmq":
            time.sleep(1)  # the port opens a moment before the broker takes logins
        return time.monotonic() - started

    def stop(self) -> None:
        if self.proc is None:
            return
        # Its own session: the group is the broker (and, for RabbitMQ, the Erlang VM it runs).
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@dataclass
class Publishing:
    """Publishers that number their messages and note what each publish answered."""

    url: str
    topic: str
    acknowledged: set[int] = field(default_factory=set)
    refusals: Counter[str] = field(default_factory=Counter)
    answers: list[tuple[float, int]] = field(default_factory=list)  # (sent at, status)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, worker: int) -> None:
        n = worker
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                response = client.post(f"/v1.0/publish/pubsub/{self.topic}", json={"n": n})
                with self.lock:
                    self.answers.append((sent, response.status_code))
                    if response.status_code == 204:
                        self.acknowledged.add(n)
                    else:
                        body = response.json()
                        self.refusals[f"{response.status_code} {body['errorCode']}: {body['message']}"] += 1
                n += PUBLISHERS
                time.sleep(0.005)

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def _wait(condition: Callable[[], bool], within: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, what
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "kind",
    [
        "jetstream",
        "rabbitmq",
        "mqtt3",
    ],
)
def test_broker_stopped_and_started_again_under_load(tmp_path: Path, kind: str) -> None:
    broker = PrivateBroker(kind, tmp_path / "broker")
    first_start = broker.start()
    topic = f"chaos-{uuid.uuid4().hex[:8]}"
    resources = {"pubsub.yaml": BROKERS[kind]("pubsub", tmp_path, broker.url, {})}
    app = SubscriberApp([subscription(topic, "/in")]).start()
    publishing: Publishing | None = None
    try:
        with running(tmp_path / "reader", app, resources, app_id="reader"):
            publisher = start_sidecar(tmp_path / "writer", app_id="writer", resources=resources)
            publishing = Publishing(publisher.url, topic)
            try:
                with ThreadPoolExecutor(PUBLISHERS) as pool:
                    for worker in range(PUBLISHERS):
                        pool.submit(publishing.run, worker)
                    _wait(lambda: publishing.count() >= BEFORE, 60, "publishing did not get going")
                    stopped_at = time.monotonic()
                    broker.stop()
                    time.sleep(OUTAGE)
                    restart = broker.start()
                    restarted_at = time.monotonic()
                    acked_at_restart = publishing.count()
                    resumed = _wait(
                        lambda: publishing.count() > acked_at_restart + 50, 60, "publishing did not resume"
                    )
                    publishing.stop.set()

                def delivered() -> set[int]:
                    return {d.event["data"]["n"] for d in app.received("/in")}

                started_waiting = time.monotonic()
                while not publishing.acknowledged <= delivered() and time.monotonic() - started_waiting < 60:
                    time.sleep(0.1)
                caught_up = time.monotonic() - started_waiting
                lost = sorted(publishing.acknowledged - delivered())
                assert publisher.proc.poll() is None, publisher.log()
                assert "Traceback" not in publisher.log()
            finally:
                publisher.stop()
    finally:
        if publishing is not None:
            publishing.stop.set()
        app.stop()
        broker.stop()
    during = [status for at, status in publishing.answers if stopped_at <= at < restarted_at]
    failed = [status for status in during if status != 204]
    deliveries = Counter(d.event["data"]["n"] for d in app.received("/in"))
    print(
        f"\n{kind}: broker start {first_start:.1f}s, restart {restart:.1f}s; "
        f"{len(publishing.acknowledged)} acknowledged, {len(lost)} lost {lost[:10]}, "
        f"{sum(c - 1 for c in deliveries.values())} delivered twice; "
        f"{len(failed)} of {len(during)} publishes during the outage failed; "
        f"publishing resumed {resumed:.1f}s after the restart, delivery caught up {caught_up:.1f}s later; "
        f"refusals: {dict(publishing.refusals)}"
    )
    assert lost == [], f"acknowledged but never delivered: {lost[:20]}"
    assert failed, "no publish was refused while the broker was away"
    assert set(failed) == {500}, Counter(failed)
    assert all("ERR_PUBSUB_PUBLISH_MESSAGE" in refusal for refusal in publishing.refusals), (
        publishing.refusals
    )
    assert not any(" object at 0x" in refusal for refusal in publishing.refusals), publishing.refusals


@pytest.mark.timeout(120)
def test_mqtt_topic_without_subscribers_takes_publishes_after_a_broker_restart(tmp_path: Path) -> None:
    """The restart guard refuses only topics that had subscribers: one that never had any takes
    publishes at once after the broker came back, as with Dapr's component."""
    broker = PrivateBroker("mqtt3", tmp_path / "broker")
    broker.start()
    resources = {"pubsub.yaml": BROKERS["mqtt3"]("pubsub", tmp_path, broker.url, {})}
    publisher = start_sidecar(tmp_path / "writer", app_id="lonely-writer", resources=resources)
    try:
        with httpx.Client(base_url=publisher.url, timeout=30) as client:
            assert client.post("/v1.0/publish/pubsub/lonely", json=1).status_code == 204
            broker.stop()
            broker.start()
            answers = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                answer = client.post("/v1.0/publish/pubsub/lonely", json=2)
                answers.append((answer.status_code, answer.text))
                if answer.status_code == 204:
                    break
                time.sleep(0.2)
        assert answers[-1][0] == 204, answers
        # At most the publish that found the connection gone is refused, never for want of subscribers.
        assert not any("no subscriber" in text for _, text in answers), answers
    finally:
        publisher.stop()
        broker.stop()
