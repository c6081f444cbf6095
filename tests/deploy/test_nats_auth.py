"""NATS authorization in deploy/: generated from the permission table `volstream up` uses
(volstream.deploy_auth), never drifted from it, and wired to every Deployment."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import replace
from pathlib import Path

import nats
import nats.errors
import pytest

from tests.deploy.manifests import (
    EXTERNAL_SECRET_PREFIX,
    KUBECTL,
    REPO,
    Container,
    Obj,
    containers,
    find,
    ident,
    of_kind,
    render,
    render_targets,
    volstream_config,
)
from volstream import deploy_auth
from volstream.bus.connection import credential_options
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.permissions import ADMIN_USER, NatsUser, service_user
from volstream.config import Config
from volstream.runtime import check_streams, provision_streams

_ENTRY = re.compile(
    r'^    \{user: "(?P<user>[^"]+)", password: \$(?P<var>\w+)'
    r"(?:, permissions: \{publish: (?P<pub>\{.*?\}), subscribe: (?P<sub>\{.*?\})\})?\}$",
    re.M,
)


def test_generated_files_match_the_permission_table() -> None:
    """Like the protobuf drift check: regenerate in memory, compare with what is committed."""
    stale = [
        str(path.relative_to(REPO))
        for path, text in deploy_auth.render().items()
        if not path.is_file() or path.read_text() != text
    ]
    assert stale == [], f"run `python -m volstream.deploy_auth`; stale: {stale}"
    assert deploy_auth.main(["--check"]) == 0


def test_check_mode_detects_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    real = deploy_auth.render()
    path = next(iter(real))
    monkeypatch.setattr(deploy_auth, "render", lambda: {path: real[path] + "# edited\n"})
    assert deploy_auth.main(["--check"]) == 1


def _auth_users(conf: str) -> dict[str, tuple[str, NatsUser | None]]:
    """``user -> (password variable, permissions)`` of a rendered authorization block."""
    out: dict[str, tuple[str, NatsUser | None]] = {}
    for m in _ENTRY.finditer(conf):
        user = None
        if m["pub"] is not None:
            pub, sub = json.loads(m["pub"]), json.loads(m["sub"])
            user = NatsUser(m["user"], tuple(pub.get("allow", ())), tuple(sub.get("allow", ())))
        out[m["user"]] = (m["var"], user)
    assert "authorization {" in conf and out, "no users in auth.conf"
    return out


def _env(c: Container) -> dict[str, Obj]:
    return {e["name"]: e for e in c.spec.get("env", [])}


@pytest.mark.parametrize("target", render_targets())
def test_every_service_runs_as_its_table_user(target: str) -> None:
    """Each volstream Deployment's container runs as the user `up` would give it for the
    same configuration (same name, same permissions in the server's authorization block);
    its password comes from Secret nats-user-<user>, the one the NATS pods read too."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize targets")
    objs = render(target)
    [sts] = of_kind(objs, "StatefulSet")
    cm_name = next(v["configMap"]["name"] for v in sts["spec"]["template"]["spec"]["volumes"])
    cm = find(objs, "ConfigMap", cm_name)
    assert cm is not None
    users = _auth_users(cm["data"]["auth.conf"])
    nats_env = _env(Container(sts, sts["spec"]["template"]["spec"]["containers"][0]))
    production = target.startswith("overlays/production")
    seen = {ADMIN_USER}
    clients = [c for c in containers(of_kind(objs, "Deployment")) if c.is_volstream]
    assert clients
    for c in clients:
        service = c.spec["args"][1]
        env = _env(c)
        assert "VOLSTREAM_NATS_USER" in env, f"{c.where}: no NATS user"
        name = env["VOLSTREAM_NATS_USER"]["value"]
        expected = service_user(service, volstream_config(objs, c))
        assert name == expected.name, c.where
        var, perms = users[name]
        assert perms == expected, f"{c.where}: {name}'s permissions differ from the table"
        secret = {"name": deploy_auth.secret_name(name), "key": "password"}
        assert env["VOLSTREAM_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == secret, c.where
        assert nats_env[var]["valueFrom"]["secretKeyRef"] == secret, f"NATS env {var}"
        if production:
            assert find(objs, "Secret", secret["name"]) is None, "production: no placeholders"
            assert secret["name"].startswith(EXTERNAL_SECRET_PREFIX)
        else:
            assert find(objs, "Secret", secret["name"]) is not None, f"{c.where}: no Secret"
        seen.add(name)
    # No user without a workload (admin aside): an unused password is an unwatched door.
    assert set(users) == seen, f"{ident(sts)}: users without a Deployment"
    assert nats_env[deploy_auth.env_var(ADMIN_USER)]["valueFrom"]["secretKeyRef"]["name"] == (
        deploy_auth.secret_name(ADMIN_USER)
    )


@pytest.mark.parametrize("target", render_targets())
def test_streams_are_provisioned_by_the_admin_job(target: str) -> None:
    """No service user may create a stream: the nats-provision Job does, as admin."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize targets")
    objs = render(target)
    job = find(objs, "Job", "nats-provision")
    assert job is not None
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "volstream.provision"]
    env = _env(Container(job, c))
    assert env["VOLSTREAM_NATS_USER"]["value"] == ADMIN_USER
    assert env["VOLSTREAM_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": deploy_auth.secret_name(ADMIN_USER),
        "key": "password",
    }


async def test_a_real_server_runs_the_production_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production auth.conf in a real nats-server, passwords from the environment as the
    StatefulSet gives them: the admin provisions (the Job's call), a connector finds its
    streams and publishes its venue only, a wrong password is refused."""
    conf = (REPO / "deploy/overlays/production/nats-auth/auth.conf").read_text()
    # A letter first: nats-server parses an unquoted variable's value ("-x..." or "123" fails).
    passwords = {name: "p" + secrets.token_urlsafe(16) for name in _auth_users(conf)}
    for name, password in passwords.items():
        monkeypatch.setenv(deploy_auth.env_var(name), password)
    with EmbeddedNats(data_dir=tmp_path / "nats", authorization=conf) as server:
        # One node here: the same streams at one replica.
        cfg = replace(deploy_auth.shared_config(), stream_replicas=1)
        await provision_streams(server.url, cfg, user=ADMIN_USER, password=passwords[ADMIN_USER])
        user = "connector-okx"
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(
                server.url, allow_reconnect=False, **credential_options(user, "wrong")
            )
        nc = await nats.connect(server.url, **credential_options(user, passwords[user]))
        try:
            await check_streams(nc.jetstream(), Config(venues=("okx",)), "connector")
            ack = await nc.jetstream().publish("md.okx.btc.book", b"x", timeout=5)
            assert ack.stream == "MD"
            with pytest.raises(nats.errors.TimeoutError):  # denied: no stream sees it
                await nc.jetstream().publish("md.deribit.btc.book", b"x", timeout=0.5)
        finally:
            await nc.close()
