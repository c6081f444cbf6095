"""The Kubernetes deployment (deploy/): render every kustomize target offline and check it.

Built-in kinds are validated against the Kubernetes OpenAPI schemas in strict mode
(kubernetes-validate); KEDA ScaledObjects are checked here field by field. On top of schema
validity the tests assert the invariants whose violation would break a running system:
probes, resources and a non-root hardened securityContext on every container; every
volstream container's VOLSTREAM_* config parses with volstream.config and points at the
NATS client Service that exists; partitions are owned exactly once per stage; Deployment
names, durable consumer names and the KEDA scaler's consumer agree; PDBs, Services and
NetworkPolicies select real pods, and the policies allow exactly the intended flows.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import tomllib
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.deploy.manifests import (
    DEPLOY,
    EXTERNAL_SECRET_PREFIX,
    EXTERNAL_SECRETS,
    KUBECTL,
    PARTITIONED_STAGES,
    REPO,
    STAGE_INPUT_STREAM,
    WORKLOAD_KINDS,
    Container,
    Endpoint,
    Obj,
    component,
    containers,
    find,
    flow_allowed,
    ident,
    name_of,
    ns_of,
    of_kind,
    pod_endpoint,
    pod_labels,
    quantity,
    render,
    render_targets,
    resolved_env,
    selector_is_empty,
    selector_matches,
    volstream_config,
)
from volstream.bus.embedded import nats_server_binary
from volstream.cli import build_parser
from volstream.config import SERVICES, Partition
from volstream.runtime import durable_name, partition_group  # the services' own rule
from volstream.subjects import Subjects

kubernetes_validate: Any = importlib.import_module("kubernetes_validate")

# Oldest Kubernetes the manifests support (native gRPC probes are GA since 1.27) and the
# newest schemas kubernetes-validate ships (catches APIs removed since).
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
TARGETS = render_targets()
# Scaled services: connectors one per venue, the rest by partition group.
STAGES = ("connector", *PARTITIONED_STAGES)
# Node size the resources are planned for (docs/architecture.md section 9: 2-core machines).
NODE_CPU = 2.0


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objs(target: str) -> tuple[Obj, ...]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize targets")
    return render(target)


def volstream_containers(objs: tuple[Obj, ...]) -> list[Container]:
    return [c for c in containers(objs) if c.is_volstream]


def dockerfile_uid() -> int:
    text = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users, "deploy/Dockerfile sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {uid}: numeric, so that runAsNonRoot can verify it"
    return int(uid)


# --- the targets exist and render --------------------------------------------------------


def test_targets_cover_base_sim_and_production() -> None:
    assert {"base", "overlays/sim", "overlays/production"} <= set(TARGETS)


def test_every_object_has_a_namespace_and_unique_identity(objs: tuple[Obj, ...]) -> None:
    keys = Counter((o["kind"], ns_of(o), name_of(o)) for o in objs if o["kind"] != "Namespace")
    assert [k for k, n in keys.items() if n > 1] == []
    namespaces = {name_of(o) for o in of_kind(objs, "Namespace")}
    assert namespaces == {"volstream"}
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "volstream", ident(o)


# --- schemas -------------------------------------------------------------------------------


CUSTOM_API_GROUPS = ("keda.sh/",)


def test_builtin_objects_validate_strictly(objs: tuple[Obj, ...]) -> None:
    builtin = [o for o in objs if not o["apiVersion"].startswith(CUSTOM_API_GROUPS)]
    assert len(builtin) > 20
    errors = []
    for version in K8S_VERSIONS:
        for o in builtin:
            if error := _schema_error(json.dumps(o, sort_keys=True), version):
                errors.append(f"{version} {ident(o)}: {error}")
    assert errors == []


@cache
def _schema_error(manifest: str, version: str) -> str | None:
    """Strict schema validation; cached because the targets share most objects."""
    try:
        kubernetes_validate.validate(json.loads(manifest), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{exc.message} at {list(exc.absolute_path)}"
    return None


def test_only_known_custom_resources(objs: tuple[Obj, ...]) -> None:
    custom = {
        (o["apiVersion"], o["kind"]) for o in objs if o["apiVersion"].startswith(CUSTOM_API_GROUPS)
    }
    # Anything else would skip both the schema check and the structure checks below.
    assert custom == {("keda.sh/v1alpha1", "ScaledObject")}


# --- KEDA ----------------------------------------------------------------------------------

SCALEDOBJECT_SPEC_FIELDS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
TRIGGER_FIELDS = {"type", "metadata", "name", "authenticationRef", "metricType", "useCachedMetrics"}
JETSTREAM_REQUIRED = {"natsServerMonitoringEndpoint", "stream", "consumer", "lagThreshold"}


def test_scaledobjects_scale_a_partition_group_on_its_own_durable(objs: tuple[Obj, ...]) -> None:
    scaled = of_kind(objs, "ScaledObject")
    assert scaled, "the stateless-scalable stage has no ScaledObject"
    for so in scaled:
        where = ident(so)
        assert so["apiVersion"] == "keda.sh/v1alpha1", where
        spec = so["spec"]
        assert set(spec) <= SCALEDOBJECT_SPEC_FIELDS, (
            f"{where}: unknown {set(spec) - SCALEDOBJECT_SPEC_FIELDS}"
        )
        ref = spec["scaleTargetRef"]
        kind = ref.get("kind", "Deployment")
        assert ref.get("apiVersion", "apps/v1") == "apps/v1" and kind in WORKLOAD_KINDS, where
        workload = find(objs, kind, ref["name"], ns_of(so))
        assert workload is not None, f"{where}: scale target {kind}/{ref['name']} is not rendered"
        # svc_iv keeps chain state per partition: two replicas must never share a durable, so
        # KEDA may only switch a group between 0 (no input for the cooldown) and 1.
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        assert isinstance(low, int) and isinstance(high, int) and 0 <= low <= high == 1, where
        assert int(spec.get("cooldownPeriod", 300)) >= 300, f"{where}: flapping to zero"
        # The HPA owns replicas; a value in the manifest is reset on every apply.
        assert "replicas" not in workload["spec"], f"{ident(workload)}: drop spec.replicas"

        [c] = workload["spec"]["template"]["spec"]["containers"]
        service = component(workload)
        assert service in PARTITIONED_STAGES, f"{where}: scales {service}, not a partitioned stage"
        cfg = volstream_config(objs, Container(workload, c))
        assert spec["triggers"], where
        for trig in spec["triggers"]:
            assert set(trig) <= TRIGGER_FIELDS, where
            assert trig["type"] == "nats-jetstream", where
            meta = trig["metadata"]
            # KEDA trigger metadata is map[string]string: an unquoted number is rejected.
            assert all(isinstance(v, str) for v in meta.values()), f"{where}: quote {meta}"
            assert set(meta) >= JETSTREAM_REQUIRED, (
                f"{where}: missing {JETSTREAM_REQUIRED - set(meta)}"
            )
            assert int(meta["lagThreshold"]) > 0, where
            # The consumer KEDA reads must be the durable this service really creates:
            # a name that does not exist reads as the stream's last sequence -> max replicas.
            assert meta["consumer"] == durable_name(service, cfg), where
            assert meta["stream"] == Subjects(cfg.namespace).stream_name(
                STAGE_INPUT_STREAM[service]
            )
            assert meta.get("account", "$G") == "$G", where  # no NATS accounts configured
            _check_monitoring_endpoint(objs, meta["natsServerMonitoringEndpoint"], where)


def _check_monitoring_endpoint(objs: tuple[Obj, ...], endpoint: str, where: str) -> None:
    """KEDA finds a clustered consumer's leader at <server_name>.<endpoint host>:<port>.

    That resolves only through the NATS StatefulSet's headless Service, with server_name =
    pod name and without advertised client URLs (else KEDA uses the advertised IPs).
    """
    host, _, port = endpoint.partition(":")
    svc_name, svc_ns = host.split(".")[0], host.split(".")[1]
    svc = find(objs, "Service", svc_name, svc_ns)
    assert svc is not None, f"{where}: {endpoint}: no Service {svc_ns}/{svc_name}"
    assert svc["spec"].get("clusterIP") == "None", f"{where}: {svc_name} must be headless"
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}, where
    sts = [s for s in of_kind(objs, "StatefulSet") if s["spec"]["serviceName"] == svc_name]
    assert len(sts) == 1, f"{where}: {svc_name} is not the NATS StatefulSet's serviceName"
    conf = nats_conf(objs, sts[0])
    assert re.search(r"^server_name:\s*\$POD_NAME\s*$", conf, re.M), where
    assert re.search(r"^\s*no_advertise:\s*true\s*$", conf, re.M), where
    monitor = re.search(r"^http:\s*\S*?:?(\d+)\s*$", conf, re.M)
    assert monitor and int(monitor.group(1)) == int(port), f"{where}: monitoring port"


# --- workloads: probes, resources, security ---------------------------------------------


def _probe_port_ok(c: Container, probe: Obj) -> str | None:
    for kind in ("httpGet", "tcpSocket", "grpc"):
        if kind in probe:
            port = probe[kind]["port"]
            if kind == "grpc" and not isinstance(port, int):
                return f"gRPC probe port {port!r} must be a number"
            if isinstance(port, str):
                return None if port in c.port_numbers() else f"probe port {port!r} not declared"
            return None if int(port) in c.declared_ports() else f"probe port {port} not declared"
    return None if "exec" in probe else "probe without handler"


def test_every_container_has_probes_on_declared_ports(objs: tuple[Obj, ...]) -> None:
    problems = []
    for c in containers(objs):
        for kind in ("livenessProbe", "readinessProbe"):
            if kind not in c.spec:
                problems.append(f"{c.where}: no {kind}")
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            if kind in c.spec and (err := _probe_port_ok(c, c.spec[kind])):
                problems.append(f"{c.where}: {kind}: {err}")
    assert problems == []


def test_api_readiness_is_native_grpc_health_unless_tls(objs: tuple[Obj, ...]) -> None:
    api = [c for c in volstream_containers(objs) if component(c.workload) == "api"]
    assert len(api) == 1
    c = api[0]
    cfg = volstream_config(objs, c)
    probe = c.spec["readinessProbe"]
    if cfg.tls_cert is None:
        assert probe["grpc"]["port"] == cfg.grpc_port and probe["grpc"].get("service", "") == ""
    else:
        # The kubelet's gRPC probe cannot speak TLS: it would never pass.
        assert "grpc" not in probe, "gRPC probe against a TLS port"
        mounts = [m["mountPath"] for m in c.spec.get("volumeMounts", [])]
        for path in (cfg.tls_cert, cfg.tls_key):
            assert any(str(path).startswith(m.rstrip("/") + "/") for m in mounts), path
    assert cfg.grpc_port in c.declared_ports() and cfg.http_port in c.declared_ports()
    assert not any("grpc" in c.spec.get(k, {}) for k in ("livenessProbe", "startupProbe")), (
        "liveness must not depend on surface freshness (a venue outage would restart the API)"
    )


def test_every_container_has_bounded_resources_for_2_core_nodes(objs: tuple[Obj, ...]) -> None:
    for c in containers(objs):
        res = c.spec.get("resources", {})
        for key in ("cpu", "memory"):
            req, lim = res.get("requests", {}).get(key), res.get("limits", {}).get(key)
            assert req is not None and lim is not None, f"{c.where}: {key} request and limit"
            assert quantity(req) <= quantity(lim), f"{c.where}: {key} request > limit"
        assert quantity(res["limits"]["cpu"]) < NODE_CPU, f"{c.where}: cpu limit >= a node"
        assert quantity(res["requests"]["cpu"]) <= NODE_CPU / 2, f"{c.where}: cpu request"


def test_every_pod_is_non_root_and_hardened(objs: tuple[Obj, ...]) -> None:
    uid = dockerfile_uid()
    for c in containers(objs):
        pod_sc = c.pod_spec.get("securityContext", {})
        sc = c.spec.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, c.where
        run_as = sc.get("runAsUser", pod_sc.get("runAsUser"))
        assert isinstance(run_as, int) and run_as > 0, c.where
        assert sc.get("allowPrivilegeEscalation") is False, c.where
        assert sc.get("privileged", False) is False, c.where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], c.where
        assert not sc.get("capabilities", {}).get("add"), c.where
        assert sc.get("readOnlyRootFilesystem") is True, c.where
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", c.where
        assert c.pod_spec.get("automountServiceAccountToken") is False, c.where
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not c.pod_spec.get(host), c.where
        if c.is_volstream:
            # The image's files and dirs belong to this uid; Python needs a writable /tmp.
            assert run_as == uid, f"{c.where}: runAsUser {run_as} != Dockerfile USER {uid}"
            mounts = {m["mountPath"] for m in c.spec.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{c.where}: read-only root needs a /tmp volume"
            data_dir = str(volstream_config(objs, c).data_dir)
            assert data_dir in mounts, f"{c.where}: VOLSTREAM_DATA_DIR {data_dir} not mounted"


def test_namespace_enforces_restricted_pod_security(objs: tuple[Obj, ...]) -> None:
    [ns] = of_kind(objs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_one_image_for_every_volstream_service(objs: tuple[Obj, ...]) -> None:
    images = {c.spec["image"] for c in volstream_containers(objs)}
    assert len(images) == 1, images
    [image] = images
    # The images transformer ran (not the bare placeholder) and the tag is pinned.
    assert "/" in image and re.search(r"(:[\w.-]+|@sha256:[0-9a-f]{64})$", image), image
    assert not image.endswith(":latest"), image


# --- configuration ---------------------------------------------------------------------------


def test_every_volstream_container_runs_a_service_with_valid_config(objs: tuple[Obj, ...]) -> None:
    parser = build_parser()
    seen = set()
    for c in volstream_containers(objs):
        assert "command" not in c.spec, f"{c.where}: keep the image's `volstream` entrypoint"
        args = [str(a) for a in c.spec["args"]]
        assert args[:1] == ["svc"] and args[1] in SERVICES, f"{c.where}: args {args}"
        try:
            parsed = parser.parse_args(args)
        except SystemExit as exc:  # argparse rejects a bad flag with exit status 2
            raise AssertionError(f"{c.where}: `volstream {' '.join(args)}` is invalid") from exc
        assert parsed.name == component(c.workload), f"{c.where}: runs {parsed.name}"
        seen.add(parsed.name)
        cfg = volstream_config(objs, c)  # raises ConfigError on any bad VOLSTREAM_* value
        assert cfg.log_level in {"DEBUG", "INFO", "WARNING", "ERROR"}
    assert {"connector", "book", "iv", "surface", "api"} <= seen


def test_every_volstream_container_uses_the_rendered_nats_client_service(
    objs: tuple[Obj, ...],
) -> None:
    nats_sts = of_kind(objs, "StatefulSet")
    assert len(nats_sts) == 1
    for c in volstream_containers(objs):
        url = resolved_env(objs, c).get("VOLSTREAM_NATS_URL")
        assert url, f"{c.where}: VOLSTREAM_NATS_URL unset (would start an embedded server)"
        parsed = urlparse(url)
        assert parsed.scheme in {"nats", "tls"} and parsed.hostname and parsed.port, url
        parts = parsed.hostname.split(".")
        svc_ns = parts[1] if len(parts) > 1 else ns_of(c.workload)
        assert len(parts) in (1, 2) or parts[2:] == ["svc", "cluster", "local"], url
        svc = find(objs, "Service", parts[0], svc_ns)
        assert svc is not None, f"{c.where}: {url}: Service {svc_ns}/{parts[0]} not rendered"
        assert svc["spec"].get("clusterIP") != "None", f"{url}: use the client Service"
        port = next((p for p in svc["spec"]["ports"] if p["port"] == parsed.port), None)
        assert port is not None, f"{url}: Service {parts[0]} has no port {parsed.port}"
        selector = {"matchLabels": svc["spec"]["selector"]}
        assert selector_matches(selector, pod_labels(nats_sts[0])), f"{url}: does not select NATS"
        nats_container = Container(
            nats_sts[0], nats_sts[0]["spec"]["template"]["spec"]["containers"][0]
        )
        target = port.get("targetPort", port["port"])
        target_port = (
            nats_container.port_numbers().get(target) if isinstance(target, str) else target
        )
        assert target_port == 4222, f"{url}: reaches NATS port {target_port}, not the client port"


def test_metrics_port_is_declared_scraped_and_probed(objs: tuple[Obj, ...]) -> None:
    for c in volstream_containers(objs):
        if component(c.workload) == "sim":
            continue
        cfg = volstream_config(objs, c)
        assert cfg.metrics_port == 9464, c.where
        assert c.port_numbers().get("metrics") == cfg.metrics_port, c.where
        notes = c.workload["spec"]["template"]["metadata"].get("annotations", {})
        assert notes.get("prometheus.io/scrape") == "true", c.where
        assert int(notes["prometheus.io/port"]) == cfg.metrics_port, c.where
        assert notes.get("prometheus.io/path") == "/metrics", c.where
        assert c.spec["livenessProbe"]["httpGet"]["path"] == "/healthz", c.where
        if component(c.workload) != "api":
            assert c.spec["readinessProbe"]["httpGet"]["path"] == "/readyz", c.where


def test_config_and_secret_references_resolve(target: str, objs: tuple[Obj, ...]) -> None:
    production = target.startswith("overlays/production")
    for w in of_kind(objs, *WORKLOAD_KINDS):
        pod = w["spec"]["template"]["spec"]
        refs: list[tuple[str, str, str | None]] = []
        for v in pod.get("volumes", []):
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"]["name"], None))
            if "secret" in v:
                refs.append(("Secret", v["secret"]["secretName"], None))
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append(("Secret", ref["name"], ref["key"]))
        for kind, name, key in refs:
            obj = find(objs, kind, name, ns_of(w))
            if obj is None:
                external = name in EXTERNAL_SECRETS or name.startswith(EXTERNAL_SECRET_PREFIX)
                assert kind == "Secret" and external and production, (
                    f"{ident(w)}: {kind} {name} is not rendered"
                )
                continue
            if key is not None:
                assert key in (obj.get("data") or {}) | (obj.get("stringData") or {}), name
    if production:
        placeholders = [
            ident(o)
            for o in objs
            if o["metadata"].get("annotations", {}).get("volstream.io/placeholder")
        ]
        assert placeholders == [], "placeholder secrets must not reach production"


# --- partitions and durable names ------------------------------------------------------


def _configured_partitions(objs: tuple[Obj, ...]) -> set[Partition]:
    api = next(c for c in volstream_containers(objs) if component(c.workload) == "api")
    cfg = volstream_config(objs, api)  # the API sees the shared config only
    return {Partition(v, c) for v in cfg.venues for c in cfg.currencies}


@pytest.mark.parametrize("stage", STAGES)
def test_each_partition_is_owned_by_exactly_one_replica_group(
    objs: tuple[Obj, ...], stage: str
) -> None:
    configured = _configured_partitions(objs)
    owners: dict[Partition, list[str]] = defaultdict(list)
    for c in volstream_containers(objs):
        if component(c.workload) == stage:
            for p in volstream_config(objs, c).owned_partitions():
                owners[p].append(ident(c.workload))
    doubled = {str(p): w for p, w in owners.items() if len(w) > 1}
    assert doubled == {}, f"{stage}: partitions owned twice"
    assert set(owners) == configured, (
        f"{stage}: missing {sorted(map(str, configured - set(owners)))}, "
        f"extra {sorted(map(str, set(owners) - configured))}"
    )


def test_one_connector_per_venue_never_two_sessions(objs: tuple[Obj, ...]) -> None:
    venues = []
    for c in volstream_containers(objs):
        if component(c.workload) == "connector":
            cfg = volstream_config(objs, c)
            assert len(cfg.venues) == 1, f"{c.where}: one venue per connector"
            venues.append(cfg.venues[0])
            w = c.workload
            assert w["kind"] == "Deployment" and w["spec"]["replicas"] == 1, c.where
            assert w["spec"]["strategy"]["type"] == "Recreate", c.where
            assert name_of(w) == f"connector-{cfg.venues[0]}", c.where
    assert sorted(venues) == sorted({p.venue for p in _configured_partitions(objs)})


def test_partition_group_names_are_the_durable_names(objs: tuple[Obj, ...]) -> None:
    groups: dict[str, set[str]] = defaultdict(set)
    for c in volstream_containers(objs):
        stage = component(c.workload)
        if stage not in PARTITIONED_STAGES:
            continue
        cfg = volstream_config(objs, c)
        group = partition_group(cfg.partitions, cfg.currencies)
        # Deployment name == durable name: what `kubectl get deploy` shows is what
        # `nats consumer ls` shows, and what the ScaledObject must name.
        assert name_of(c.workload) == durable_name(stage, cfg), c.where
        assert pod_labels(c.workload).get("volstream.io/partition-group") == group, c.where
        # Two pods of a group on one durable must not overlap in a rollout.
        assert c.workload["spec"]["strategy"]["type"] == "Recreate", c.where
        groups[group].add(stage)
    # Each group runs the whole chain book -> iv -> surface for its partitions.
    assert groups and all(s == set(PARTITIONED_STAGES) for s in groups.values()), groups


def test_partition_group_rule() -> None:
    ccys = ("BTC", "ETH")
    both = [
        Partition("okx", "BTC"),
        Partition("deribit", "ETH"),
        Partition("okx", "ETH"),
        Partition("deribit", "BTC"),
    ]
    assert partition_group((), ccys) == "all"
    assert partition_group(both, ccys) == "deribit-okx"
    assert partition_group([Partition("deribit", "BTC")], ccys) == "deribit_btc"
    assert (
        partition_group(
            [Partition("bybit", "ETH"), Partition("binance", "BTC"), Partition("binance", "ETH")],
            ccys,
        )
        == "binance-bybit_eth"
    )


# --- selectors: workloads, PDBs, Services, NetworkPolicies ---------------------------------


def test_workload_selectors_match_own_pods_only(objs: tuple[Obj, ...]) -> None:
    workloads = of_kind(objs, *WORKLOAD_KINDS)
    for w in workloads:
        assert selector_matches(w["spec"]["selector"], pod_labels(w)), ident(w)
        for other in workloads:
            if other is not w and ns_of(other) == ns_of(w):
                assert not selector_matches(w["spec"]["selector"], pod_labels(other)), (
                    f"{ident(w)} selects the pods of {ident(other)}"
                )


def _replicas(objs: tuple[Obj, ...], w: Obj) -> int:
    for so in of_kind(objs, "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] == name_of(w):
            return int(so["spec"].get("maxReplicaCount", 1))
    return int(w["spec"].get("replicas", 1))


def test_pdbs_select_pods_and_allow_a_drain(objs: tuple[Obj, ...]) -> None:
    workloads = of_kind(objs, *WORKLOAD_KINDS)
    covered: Counter[str] = Counter()
    for pdb in of_kind(objs, "PodDisruptionBudget"):
        matched = [w for w in workloads if selector_matches(pdb["spec"]["selector"], pod_labels(w))]
        assert matched, f"{ident(pdb)} selects no pods"
        replicas = sum(_replicas(objs, w) for w in matched)
        spec = pdb["spec"]
        if "minAvailable" in spec:
            assert isinstance(spec["minAvailable"], int) and spec["minAvailable"] < replicas, (
                f"{ident(pdb)}: minAvailable {spec['minAvailable']} of {replicas} blocks drains"
            )
        else:
            assert isinstance(spec["maxUnavailable"], int) and spec["maxUnavailable"] >= 1
        covered.update(ident(w) for w in matched)
    # Exactly one PDB per pod: the eviction API refuses pods with several.
    assert {ident(w): covered[ident(w)] for w in workloads} == {ident(w): 1 for w in workloads}


def test_services_select_pods_and_target_declared_ports(objs: tuple[Obj, ...]) -> None:
    for svc in of_kind(objs, "Service"):
        selected = [
            w
            for w in of_kind(objs, *WORKLOAD_KINDS)
            if selector_matches({"matchLabels": svc["spec"]["selector"]}, pod_labels(w))
        ]
        assert selected, f"{ident(svc)} selects no pods"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for w in selected:
                cs = [Container(w, c) for c in w["spec"]["template"]["spec"]["containers"]]
                ok = any(
                    target in c.port_numbers()
                    if isinstance(target, str)
                    else target in c.declared_ports()
                    for c in cs
                )
                assert ok, f"{ident(svc)} port {port['name']}: {ident(w)} has no {target}"


def test_network_policies_select_existing_pods(objs: tuple[Obj, ...]) -> None:
    pods = [pod_labels(w) for w in of_kind(objs, *WORKLOAD_KINDS)]
    policies = of_kind(objs, "NetworkPolicy")
    deny = [
        p
        for p in policies
        if selector_is_empty(p["spec"]["podSelector"])
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no default-deny NetworkPolicy"
    for p in policies:
        assert any(selector_matches(p["spec"]["podSelector"], labels) for labels in pods), ident(p)
        for rule in [*(p["spec"].get("ingress") or []), *(p["spec"].get("egress") or [])]:
            for peer in [*(rule.get("from") or []), *(rule.get("to") or [])]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(selector_matches(peer["podSelector"], lb) for lb in pods), (
                        f"{ident(p)}: peer {peer['podSelector']} matches no pod"
                    )


PUBLIC_VENUE_IP = "203.0.113.10"  # TEST-NET-3: stands for a venue's public address
PRIVATE_IP = "10.20.30.40"
OUTSIDE_CLIENT = Endpoint("client", ip="198.51.100.7")
PROMETHEUS = Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
KEDA = Endpoint("keda-operator", "keda", {"app": "keda-operator"})
KUBE_DNS = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"})


def test_network_policies_allow_exactly_the_intended_flows(objs: tuple[Obj, ...]) -> None:
    policies = of_kind(objs, "NetworkPolicy")
    nats = [pod_endpoint(w) for w in of_kind(objs, "StatefulSet")]
    volstream = volstream_containers(objs)
    venue_ip = Endpoint("venue", ip=PUBLIC_VENUE_IP)
    private = Endpoint("private", ip=PRIVATE_IP)

    def allowed(src: Endpoint, dst: Endpoint, port: int, proto: str = "TCP") -> bool:
        return flow_allowed(policies, src, dst, port, proto)

    for n in nats:
        assert allowed(n, nats[0], 6222), "NATS routes"
        assert allowed(KEDA, n, 8222), "KEDA reads JetStream lag from the monitoring port"
        assert allowed(n, KUBE_DNS, 53, "UDP")
        assert not allowed(OUTSIDE_CLIENT, n, 4222), "NATS exposed outside"
    for c in volstream:
        me = pod_endpoint(c.workload)
        stage = component(c.workload)
        assert allowed(me, nats[0], 4222), f"{c.where} cannot reach NATS"
        assert allowed(me, KUBE_DNS, 53, "UDP"), f"{c.where}: DNS"
        assert not allowed(me, private, 443), f"{c.where}: reaches private addresses"
        assert allowed(me, venue_ip, 443) == (stage == "connector"), f"{c.where}: internet"
        assert not allowed(OUTSIDE_CLIENT, me, 9464), f"{c.where}: metrics open to all"
        assert allowed(OUTSIDE_CLIENT, me, 50051) == (stage == "api"), c.where
        if stage == "connector" and (sim_url := volstream_config(objs, c).sim_url):
            sim = urlparse(sim_url)
            assert sim.hostname and sim.port
            svc = find(objs, "Service", sim.hostname.split(".")[0], ns_of(c.workload))
            assert svc is not None, f"{c.where}: {sim_url}: no such Service"
            backends = [
                w
                for w in of_kind(objs, "Deployment")
                if selector_matches({"matchLabels": svc["spec"]["selector"]}, pod_labels(w))
            ]
            assert backends
            [port] = [p for p in svc["spec"]["ports"] if p["port"] == sim.port]
            target = port.get("targetPort", port["port"])
            numbers = Container(
                backends[0], backends[0]["spec"]["template"]["spec"]["containers"][0]
            )
            target_port = numbers.port_numbers()[target] if isinstance(target, str) else int(target)
            assert allowed(me, pod_endpoint(backends[0]), target_port), f"{c.where} -> simulator"
    for w in of_kind(objs, *WORKLOAD_KINDS):
        notes = w["spec"]["template"]["metadata"].get("annotations", {})
        if notes.get("prometheus.io/scrape") == "true":
            port = int(notes["prometheus.io/port"])
            assert allowed(PROMETHEUS, pod_endpoint(w), port), f"{ident(w)}: scrape :{port}"
    # Lateral movement between stages is not allowed (default deny).
    book = next(c for c in volstream if component(c.workload) == "book")
    api = next(c for c in volstream if component(c.workload) == "api")
    assert not allowed(pod_endpoint(book.workload), pod_endpoint(api.workload), 50051)


def test_the_dashboard_is_exposed_with_the_api(objs: tuple[Obj, ...]) -> None:
    """The API serves the dashboard on its HTTP port: its Service and policies expose it."""
    [api] = [c for c in volstream_containers(objs) if component(c.workload) == "api"]
    http_port = volstream_config(objs, api).http_port
    exposed = []
    for svc in of_kind(objs, "Service"):
        if not selector_matches({"matchLabels": svc["spec"]["selector"]}, pod_labels(api.workload)):
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            number = api.port_numbers().get(target) if isinstance(target, str) else int(target)
            if number == http_port:
                exposed.append(f"{name_of(svc)}:{port['port']}")
    assert exposed, f"no Service exposes the API's HTTP port {http_port} (the dashboard)"
    policies = of_kind(objs, "NetworkPolicy")
    assert flow_allowed(policies, OUTSIDE_CLIENT, pod_endpoint(api.workload), http_port, "TCP")


# --- NATS ------------------------------------------------------------------------------------


def nats_conf(objs: tuple[Obj, ...], sts: Obj) -> str:
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = c.get("args", [])
    conf_path = args[args.index("--config") + 1]
    mount = next(m for m in c["volumeMounts"] if conf_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = find(objs, "ConfigMap", volume["configMap"]["name"], ns_of(sts))
    assert cm is not None, f"{ident(sts)}: config ConfigMap not rendered"
    data = cm["data"]

    def expand(name: str) -> str:
        # nats-server's `include ./file`, resolved within the mounted ConfigMap.
        return re.sub(
            r"^include \./(\S+)$", lambda m: expand(m.group(1)), str(data[name]), flags=re.M
        )

    return expand(Path(conf_path).name)


def test_nats_is_a_three_node_jetstream_cluster_with_matching_routes(
    objs: tuple[Obj, ...], tmp_path: Path
) -> None:
    [sts] = of_kind(objs, "StatefulSet")
    replicas = sts["spec"]["replicas"]
    assert replicas == 3, "JetStream R3 needs 3 nodes"
    headless = find(objs, "Service", sts["spec"]["serviceName"], ns_of(sts))
    assert headless is not None and headless["spec"]["clusterIP"] == "None"
    assert headless["spec"].get("publishNotReadyAddresses") is True, "routes before readiness"
    conf = nats_conf(objs, sts)
    routes = set(re.findall(r"nats://([\w.-]+):(\d+)", conf))
    expected = {
        (f"{name_of(sts)}-{i}.{name_of(headless)}.{ns_of(sts)}.svc.cluster.local", "6222")
        for i in range(replicas)
    }
    assert routes == expected, "cluster routes must name every StatefulSet pod"
    store = re.search(r"store_dir:\s*(\S+)", conf)
    assert store is not None
    c = sts["spec"]["template"]["spec"]["containers"][0]
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    data_mounts = [m for m in c["volumeMounts"] if m["name"] in claims]
    assert [m["mountPath"] for m in data_mounts] == [store.group(1)], "JetStream store on the PVC"

    # The server itself accepts the rendered config with the container's environment.
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    # The users' passwords (NATS_PW_*, from Secrets): any value, every one must be set.
    env |= {e["name"]: "pw" for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    env["POD_NAME"] = f"{name_of(sts)}-0"
    (tmp_path / "nats.conf").write_text(conf)
    proc = subprocess.run(
        [nats_server_binary(), "-c", str(tmp_path / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout


# --- image -------------------------------------------------------------------------------


NOT_IN_IMAGE = {"simulator"}


def test_dockerfile_builds_a_non_root_image_of_every_package() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert froms and all(f in {"${PYTHON_IMAGE}", "python:3.11-slim"} for f in froms)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, flags=re.M)
    assert dockerfile_uid() != 0
    assert re.search(r'^ENTRYPOINT \["volstream"\]$', text, flags=re.M)
    # Every package setuptools installs is in the build context of the image, except the
    # exchange simulator: a development tool (`up --sim`), never in the production image.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = [
        p.rstrip("*.") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = set(re.findall(r"^COPY\s+(\S+)\s+\./\S+$", text, flags=re.M))
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for package in include:
        if package in NOT_IN_IMAGE:
            assert package not in copied and f"!{package}/" not in ignore, package
        else:
            assert package in copied, f"deploy/Dockerfile does not COPY {package}"
            assert f"!{package}/" in ignore, f"Dockerfile.dockerignore hides {package}"
