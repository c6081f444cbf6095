"""Helpers for the deploy tests: render kustomize targets and reason about the objects.

Everything here works on rendered manifests (plain dicts), offline: no cluster needed.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from volstream.config import Config, from_env

# PyYAML ships without type information; a module handle typed Any keeps mypy strict elsewhere.
yaml: Any = importlib.import_module("yaml")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBECTL = shutil.which("kubectl")

Obj = dict[str, Any]
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
# Stage -> the JetStream stream (base name, before namespacing) its durable consumer reads.
STAGE_INPUT_STREAM = {"book": "MD", "iv": "BOOK", "surface": "IV", "api": "SURFACE"}
PARTITIONED_STAGES = ("book", "iv", "surface")
# Secrets that production provisions out of band (never rendered there).
EXTERNAL_SECRETS = frozenset({"volstream-api-token", "volstream-api-tls"})
# ... and the NATS users' passwords (nats-user-<user>, deploy/README.md).
EXTERNAL_SECRET_PREFIX = "nats-user-"


def render_targets() -> list[str]:
    """deploy/base plus every overlay directory, as paths relative to deploy/."""
    overlays = sorted(
        f"overlays/{p.name}"
        for p in (DEPLOY / "overlays").iterdir()
        if (p / "kustomization.yaml").is_file()
    )
    return ["base", *overlays]


@cache
def render(target: str) -> tuple[Obj, ...]:
    """`kubectl kustomize deploy/<target>` as a tuple of objects (cached per target)."""
    assert KUBECTL is not None
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return tuple(docs)


def name_of(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def ns_of(obj: Obj) -> str:
    return str(obj["metadata"].get("namespace", "default"))


def ident(obj: Obj) -> str:
    return f"{obj['kind']}/{name_of(obj)}"


def of_kind(objs: Iterable[Obj], *kinds: str) -> list[Obj]:
    return [o for o in objs if o["kind"] in kinds]


def find(objs: Iterable[Obj], kind: str, name: str, namespace: str | None = None) -> Obj | None:
    for o in objs:
        if (
            o["kind"] == kind
            and name_of(o) == name
            and (namespace is None or ns_of(o) == namespace)
        ):
            return o
    return None


# --- label selectors ---------------------------------------------------------------------


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics; an empty selector matches everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selector_is_empty(selector: Mapping[str, Any] | None) -> bool:
    return not selector or (
        not selector.get("matchLabels") and not selector.get("matchExpressions")
    )


# --- workloads and containers ----------------------------------------------------------


@dataclass(frozen=True)
class Container:
    workload: Obj
    spec: Obj

    @property
    def where(self) -> str:
        return f"{ident(self.workload)} container {self.spec['name']}"

    @property
    def pod_spec(self) -> Obj:
        spec: Obj = self.workload["spec"]["template"]["spec"]
        return spec

    @property
    def is_volstream(self) -> bool:
        """A container running the volstream image (`volstream svc NAME`)."""
        repo = str(self.spec.get("image", "")).split("@")[0].rsplit(":", 1)[0]
        return repo.rsplit("/", 1)[-1] == "volstream"

    def port_numbers(self) -> dict[str, int]:
        return {
            p["name"]: int(p["containerPort"]) for p in self.spec.get("ports", []) if "name" in p
        }

    def declared_ports(self) -> set[int]:
        return {int(p["containerPort"]) for p in self.spec.get("ports", [])}


def containers(objs: Iterable[Obj]) -> Iterator[Container]:
    for w in of_kind(objs, *WORKLOAD_KINDS):
        for c in w["spec"]["template"]["spec"]["containers"]:
            yield Container(w, c)


def component(workload: Obj) -> str:
    labels = workload["spec"]["template"]["metadata"].get("labels", {})
    return str(labels.get("app.kubernetes.io/component", ""))


def pod_labels(workload: Obj) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"].get("labels", {}))


def resolved_env(objs: Sequence[Obj], c: Container) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom in order, then env.

    Secret values become the placeholder "<secret>"; field references "<field>". A reference
    to a ConfigMap that is not in the render raises AssertionError.
    """
    env: dict[str, str] = {}
    ns = ns_of(c.workload)
    for source in c.spec.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            cm = find(objs, "ConfigMap", ref, ns)
            assert cm is not None, f"{c.where}: envFrom ConfigMap {ref} is not in the render"
            prefix = source.get("prefix", "")
            env.update({prefix + k: str(v) for k, v in (cm.get("data") or {}).items()})
        elif "secretRef" in source:
            raise AssertionError(f"{c.where}: envFrom secretRef is not used by volstream")
    for var in c.spec.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "valueFrom" in var:
            vf = var["valueFrom"]
            if "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                cm = find(objs, "ConfigMap", ref["name"], ns)
                assert cm is not None, f"{c.where}: ConfigMap {ref['name']} is not in the render"
                env[var["name"]] = str((cm.get("data") or {})[ref["key"]])
            elif "secretKeyRef" in vf:
                env[var["name"]] = "<secret>"
            else:
                env[var["name"]] = "<field>"
        else:
            env[var["name"]] = ""
    return env


def volstream_config(objs: Sequence[Obj], c: Container) -> Config:
    """The volstream Config this container would run with (parsed by volstream.config)."""
    env = {k: v for k, v in resolved_env(objs, c).items() if k.startswith("VOLSTREAM_")}
    return from_env(env, base=Config()).validated()


# --- the durable-consumer naming rule ----------------------------------------------------


# --- quantities --------------------------------------------------------------------------

_SUFFIX = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")


def quantity(value: str | int | float) -> float:
    m = _QUANTITY.match(str(value))
    assert m and m.group(2) in _SUFFIX, f"not a Kubernetes quantity: {value!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2)]


# --- NetworkPolicy evaluation ------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace + labels) or an address outside the cluster (ip)."""

    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def pod_endpoint(workload: Obj) -> Endpoint:
    return Endpoint(ident(workload), ns_of(workload), pod_labels(workload))


def _peer_matches(peer: Obj, policy_ns: str, ep: Endpoint) -> bool:
    if "ipBlock" in peer:
        if ep.ip is None:
            return False  # pod IPs are not written into ipBlocks here
        addr = ipaddress.ip_address(ep.ip)
        block = peer["ipBlock"]
        if addr not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(addr in ipaddress.ip_network(x) for x in block.get("except", []))
    if ep.ip is not None:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ep.namespace_labels):
            return False
    elif ep.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], ep.labels)


def _ports_match(rule_ports: list[Obj] | None, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        start = p["port"]
        assert isinstance(start, int), f"NetworkPolicy port {start!r}: use numbers in policies"
        if start <= port <= int(p.get("endPort", start)):
            return True
    return False


def _policy_types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _side_allows(
    policies: Sequence[Obj],
    direction: str,
    subject: Endpoint,
    peer: Endpoint,
    port: int,
    proto: str,
) -> bool:
    """Does the policy set let `subject` send (Egress) to / receive (Ingress) from `peer`?"""
    if subject.ip is not None:
        return True  # outside the cluster: not governed by these policies
    selecting = [
        p
        for p in policies
        if ns_of(p) == subject.namespace
        and direction in _policy_types(p)
        and selector_matches(p["spec"]["podSelector"], subject.labels)
    ]
    if not selecting:
        return True  # a pod no policy selects is not isolated
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if not _ports_match(rule.get("ports"), port, proto):
                continue
            if not peers or any(_peer_matches(x, ns_of(policy), peer) for x in peers):
                return True
    return False


def flow_allowed(
    policies: Sequence[Obj], src: Endpoint, dst: Endpoint, port: int, proto: str = "TCP"
) -> bool:
    """A connection src -> dst:port is allowed when src's egress and dst's ingress allow it."""
    return _side_allows(policies, "Egress", src, dst, port, proto) and _side_allows(
        policies, "Ingress", dst, src, port, proto
    )
