"""A three-node JetStream cluster on loopback, each node configured from the Kubernetes
StatefulSet's own ``deploy/base/platform/nats/nats.conf`` (what is deployed is what is
tested): only the addresses, the route list and the paths are rewritten, each rewrite
checked to hit exactly one line, so a change of the deployed file's shape fails here first.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from volstream.bus.embedded import free_port, spawn_nats_server, wait_listening

NATS_DEPLOY = Path(__file__).resolve().parents[2] / "deploy/base/platform/nats"
DEPLOY_CONF = NATS_DEPLOY / "nats.conf"


def _rewrite(text: str, pattern: str, replacement: str) -> str:
    new, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if n != 1:
        raise AssertionError(f"deploy nats.conf: {pattern!r} matched {n} times, expected once")
    return new


def loopback_conf(
    template: str,
    client_port: int,
    http_port: int,
    cluster_port: int,
    route_ports: list[int],
    node_dir: Path,
) -> str:
    """The deployed node config with loopback addresses, local routes and paths."""
    text = _rewrite(template, r"^listen: 0\.0\.0\.0:4222$", f"listen: 127.0.0.1:{client_port}")
    text = _rewrite(text, r"^http: 0\.0\.0\.0:8222$", f"http: 127.0.0.1:{http_port}")
    text = _rewrite(text, r"^pid_file: .*$", f'pid_file: "{node_dir / "nats.pid"}"')
    text = _rewrite(text, r"^  store_dir: .*$", f'  store_dir: "{node_dir / "jetstream"}"')
    text = _rewrite(text, r"^  listen: 0\.0\.0\.0:6222$", f"  listen: 127.0.0.1:{cluster_port}")
    routes = "\n".join(f"    nats://127.0.0.1:{p}" for p in route_ports)
    text = _rewrite(
        text, r"^  routes: \[\n(?:    nats://\S+\n)+  \]$", f"  routes: [\n{routes}\n  ]"
    )
    return text


PRODUCTION_PATCH = NATS_DEPLOY.parents[2] / "overlays/production/patches/nats.yaml"


def statefulset_env() -> dict[str, str]:
    """The JetStream limits of the nats container as the production overlay deploys them
    (its patch over the base StatefulSet). The base's 8G store barely exceeds the 7.5 GiB
    every stream's max_bytes reserve on each node at three replicas, and JetStream then
    refused placement now and then ("insufficient storage")."""
    found: dict[str, str] = {}
    for path in (NATS_DEPLOY / "statefulset.yaml", PRODUCTION_PATCH):
        found.update(re.findall(r"- name: (JS_\w+)\n\s+value: (\S+)", path.read_text()))
    return found


@dataclass
class Node:
    name: str
    client_port: int
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    """Three nats-server processes named like the StatefulSet's pods (nats-0 ...)."""

    root: Path
    size: int = 3
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        template = DEPLOY_CONF.read_text()
        cluster_ports = [free_port() for _ in range(self.size)]
        for i in range(self.size):
            node_dir = self.root / f"nats-{i}"
            node_dir.mkdir(parents=True)
            client_port = free_port()
            conf = node_dir / "nats.conf"
            conf.write_text(
                loopback_conf(
                    template, client_port, free_port(), cluster_ports[i], cluster_ports, node_dir
                )
            )
            self.nodes.append(Node(f"nats-{i}", client_port, conf, node_dir / "nats.log"))

    @property
    def url(self) -> str:
        """Every node, as clients are given them (comma-separated)."""
        return ",".join(n.url for n in self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def start(self, node: Node, timeout_s: float = 10.0) -> None:
        # The StatefulSet's container env: the pod name and its store limits.
        env = {**os.environ, **statefulset_env(), "POD_NAME": node.name}
        node.proc = spawn_nats_server(node.conf, node.log, env)
        wait_listening(node.proc, node.client_port, timeout_s, f"{node.name}, log {node.log}")

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def kill(self, node: Node) -> None:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def stop_all(self) -> None:
        # SIGKILL: the deployed config's lame-duck mode would hold a SIGTERM for 30 s.
        for node in self.nodes:
            if node.alive():
                self.kill(node)
