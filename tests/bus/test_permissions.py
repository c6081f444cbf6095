"""Least privilege on the bus: the permission table (volstream/bus/permissions.py) and a real
nats-server started the way `volstream up` starts it (volstream.supervisor.
start_embedded_nats), where a service's user can publish only what the table allows and a
client without credentials cannot connect."""

from __future__ import annotations

import asyncio
import re
import stat
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from volstream.bus.connection import credential_options
from volstream.bus.credentials import read_credentials
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.permissions import (
    ADMIN_USER,
    inbox_prefix,
    markdown_table,
    service_user,
    up_users,
)
from volstream.bus.streams import (
    ConsumerSpec,
    StreamLimits,
    default_stream_specs,
    ensure_consumer,
    ensure_streams,
)
from volstream.config import Config, Partition
from volstream.runtime import check_streams
from volstream.subjects import Subjects
from volstream.supervisor import service_specs, start_embedded_nats

README = Path(__file__).resolve().parents[2] / "README.md"
# How long a denied publish is given to be (wrongly) stored or answered.
DENIED_WAIT_S = 0.5


# --- the table ---------------------------------------------------------------------------------


def test_a_connector_publishes_its_own_venue_only() -> None:
    user = service_user("connector", Config(venues=("deribit",)))
    assert user.name == "connector-deribit"
    data = [s for s in user.publish if not s.startswith("$JS.")]
    assert data == ["md.deribit.>", "dlq.connector.deribit"]
    assert user.subscribe == ("_INBOX_connector-deribit.>", "ctl.connector.deribit.resync")
    assert not any("CREATE" in s or "DELETE" in s or "UPDATE" in s for s in user.publish)


def test_subjects_and_streams_follow_the_namespace() -> None:
    cfg = Config(venues=("okx",), namespace="replay.run1")
    user = service_user("connector", cfg)
    assert "replay.run1.md.okx.>" in user.publish
    assert "$JS.API.STREAM.INFO.MD_REPLAY_RUN1" in user.publish
    assert not any(s.startswith("md.") for s in user.publish)


def test_a_partition_replica_publishes_its_partitions_and_uses_its_own_durable() -> None:
    cfg = Config(partitions=(Partition("deribit", "BTC"),))
    book = service_user("book", cfg)
    assert book.name == "book-deribit_btc"
    data = [s for s in book.publish if not s.startswith("$JS.")]
    assert data == [
        "book.deribit.btc",
        "book.deribit.btc.>",
        "dlq.book.>",
        "ctl.connector.deribit.resync",
    ]
    assert "$JS.API.CONSUMER.MSG.NEXT.MD.book-deribit_btc" in book.publish
    assert "$JS.ACK.MD.book-deribit_btc.>" in book.publish
    # Another replica's durable is out of reach.
    assert not any("book-all" in s for s in book.publish)


def test_surface_publishes_consolidated_surfaces_only_where_it_produces_them() -> None:
    only = service_user("surface", Config(consolidate="only"))
    assert only.name == "surface-consolidated"
    data = [s for s in only.publish if not s.startswith("$JS.")]
    assert data == ["surface.all.btc", "surface.all.eth", "dlq.surface.>"]
    split = service_user("surface", Config(partitions=(Partition("okx", "BTC"),)))
    assert not any(s.startswith("surface.all.") for s in split.publish)


def test_up_hands_each_service_its_own_user_through_the_environment(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path, nats_url="nats://127.0.0.1:4222")
    passwords = {u.name: f"pw-{u.name}" for u in up_users(cfg)}
    specs = service_specs(cfg, True, 1234, passwords)
    users = {s.name: s.env["VOLSTREAM_NATS_USER"] for s in specs}
    assert users == {
        "sim": "sim",
        "connector.deribit": "connector-deribit",
        "connector.okx": "connector-okx",
        "connector.bybit": "connector-bybit",
        "connector.binance": "connector-binance",
        "book": "book-all",
        "iv": "iv-all",
        "surface": "surface-all",
        "archive": "archive-all",
        "api": "api",
    }
    for spec in specs:
        user = spec.env["VOLSTREAM_NATS_USER"]
        assert spec.env["VOLSTREAM_NATS_PASSWORD"] == f"pw-{user}"
        assert not any("pw-" in arg for arg in spec.argv)
        assert "pw-" not in spec.env["VOLSTREAM_NATS_URL"]
    # Without credentials (an external server given none) nothing changes.
    assert all("VOLSTREAM_NATS_USER" not in s.env for s in service_specs(cfg, True, 1234))


def test_readme_table_equals_the_code() -> None:
    text = README.read_text()
    found = re.search(r"<!-- nats-permissions -->\n(.*?)<!-- /nats-permissions -->", text, re.S)
    assert found, "README lost its NATS permission table markers"
    assert found.group(1) == markdown_table(Config()), (
        "README's permission table differs from volstream.bus.permissions; paste:\n"
        + markdown_table(Config())
    )


# --- a real nats-server as `up` starts it ------------------------------------------------------


@dataclass
class UpNats:
    server: EmbeddedNats
    passwords: dict[str, str]
    credentials: Path


@pytest.fixture
def up_nats(tmp_path: Path) -> Iterator[UpNats]:
    server, passwords, credentials = start_embedded_nats(Config(data_dir=tmp_path / "data"))
    try:
        yield UpNats(server, passwords, credentials)
    finally:
        server.stop()


@dataclass
class UserClient:
    nc: Client
    errors: list[Exception]

    async def violations(self, count: int, timeout_s: float = 5.0) -> list[str]:
        """The permission violations reported to the error callback (waits for ``count``;
        nats-py lowercases the server's message)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [str(e) for e in self.errors if "permissions violation" in str(e).lower()]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)
        return [str(e) for e in self.errors]


async def connect_as(up: UpNats, user: str) -> UserClient:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(
        up.server.url,
        error_cb=on_error,
        allow_reconnect=False,
        **credential_options(user, up.passwords[user]),
    )
    return UserClient(nc, errors)


@pytest.fixture
async def admin(up_nats: UpNats) -> AsyncIterator[Client]:
    client = await connect_as(up_nats, ADMIN_USER)
    await ensure_streams(
        client.nc.jetstream(), default_stream_specs(Subjects(), StreamLimits.compact())
    )
    yield client.nc
    await client.nc.close()


def denied_publish(subject: str, reported: list[str]) -> bool:
    return any(f'publish to "{subject.lower()}"' in e for e in reported)


async def stored(admin: Client, stream: str, subject: str) -> bool:
    try:
        await admin.jetstream().get_last_msg(stream, subject)
    except NotFoundError:
        return False
    return True


def test_credentials_and_server_config_are_private(up_nats: UpNats) -> None:
    for path in (up_nats.credentials, up_nats.server.data_dir / "nats-server.conf"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    passwords = read_credentials(up_nats.credentials)
    assert passwords == up_nats.passwords
    assert set(passwords) == {ADMIN_USER, *(u.name for u in up_users(Config()))}
    assert len(set(passwords.values())) == len(passwords)  # one random password each
    assert all(len(p) >= 40 for p in passwords.values())


async def test_a_client_without_credentials_or_with_a_wrong_password_cannot_connect(
    up_nats: UpNats,
) -> None:
    for options in ({}, {"user": "api", "password": "wrong"}, {"user": "nobody", "password": "x"}):
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            await nats.connect(
                up_nats.server.url, allow_reconnect=False, connect_timeout=2, **options
            )


async def test_a_connector_cannot_publish_surfaces_or_another_venues_market_data(
    up_nats: UpNats, admin: Client
) -> None:
    client = await connect_as(up_nats, "connector-deribit")
    js = client.nc.jetstream()
    try:
        # Its own venue's market data lands (the control: the user does work).
        ack = await js.publish("md.deribit.btc.book", b"real", timeout=5)
        assert ack.stream == "MD"
        denied = {
            "surface.deribit.btc": "SURFACE",
            "surface.all.btc": "SURFACE",
            "md.okx.btc.book": "MD",
            "md.bybit.eth.ticker": "MD",
            "book.deribit.btc": "BOOK",
            "sim.truth.deribit.btc": "SIM",
        }
        for subject in denied:
            # No ack: the server drops the message before any stream sees it.
            with pytest.raises(nats.errors.TimeoutError):
                await js.publish(subject, b"fake", timeout=DENIED_WAIT_S)
        reported = await client.violations(len(denied))
        for subject, stream in denied.items():
            assert denied_publish(subject, reported), (subject, reported)
            assert not await stored(admin, stream, subject), subject
        assert (await admin.jetstream().stream_info("MD")).state.messages == 1
        assert (await admin.jetstream().stream_info("SURFACE")).state.messages == 0
        assert client.nc.is_connected  # a denied publish is reported, not fatal
    finally:
        await client.nc.close()


async def test_the_api_publishes_nothing_but_jetstream_api_requests(
    up_nats: UpNats, admin: Client
) -> None:
    client = await connect_as(up_nats, "api")
    nc = client.nc
    try:
        # What the API does works: stream info, latest surfaces (direct get), an ordered
        # consumer of SURFACE.
        await admin.jetstream().publish("surface.deribit.btc", b"surface", timeout=5)
        js = nc.jetstream()
        assert (await js.stream_info("SURFACE")).state.messages == 1
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            await got.put(msg.data)

        sub = await js.subscribe("surface.>", stream="SURFACE", cb=on_msg, ordered_consumer=True)
        assert await asyncio.wait_for(got.get(), 5) == b"surface"
        await sub.unsubscribe()
        reply = await nc.request(
            "$JS.API.DIRECT.GET.SURFACE", b'{"last_by_subj": "surface.deribit.btc"}', timeout=5
        )
        assert reply.data == b"surface"

        denied = {
            "md.deribit.btc.book": "MD",
            "book.deribit.btc": "BOOK",
            "iv.deribit.btc": "IV",
            "surface.deribit.btc": "SURFACE",
            "sim.truth.deribit.btc": "SIM",
            "dlq.book.deribit": "DLQ",
        }
        for subject in denied:
            await nc.publish(subject, b"fake")
        # Nor may it manage streams or consumers, or read the bus outside JetStream.
        admin_api = [
            "$JS.API.STREAM.DELETE.SURFACE",
            "$JS.API.STREAM.CREATE.EVIL",
            "$JS.API.STREAM.PURGE.SURFACE",
            "$JS.API.CONSUMER.DELETE.MD.book-all",
            "ctl.connector.deribit.resync",
        ]
        for subject in admin_api:
            await nc.publish(subject, b"{}")
        await nc.subscribe("md.>")
        await nc.flush()
        reported = await client.violations(len(denied) + len(admin_api) + 1)
        for subject in [*denied, *admin_api]:
            assert denied_publish(subject, reported), (subject, reported)
        assert any('subscription to "md.>"' in e for e in reported), reported
        await asyncio.sleep(DENIED_WAIT_S)
        for subject, stream in denied.items():
            if subject != "surface.deribit.btc":
                assert not await stored(admin, stream, subject), subject
        assert (await admin.jetstream().stream_info("SURFACE")).state.messages == 1
    finally:
        await nc.close()


def test_the_archiver_reads_market_data_only_when_it_archives_it() -> None:
    plain = service_user("archive", Config())
    assert not any(".MD" in s for s in plain.publish)
    with_md = service_user("archive", Config(archive_md=True))
    assert "$JS.API.CONSUMER.MSG.NEXT.MD.archive-all-md" in with_md.publish
    assert "$JS.API.CONSUMER.RESET.MD.archive-all-md" in with_md.publish
    assert not any(s.startswith(("md.", "surface.")) for s in with_md.publish)


async def test_the_archiver_reads_surfaces_with_its_own_durable_and_publishes_nothing(
    up_nats: UpNats, admin: Client
) -> None:
    client = await connect_as(up_nats, "archive-all")
    nc = client.nc
    try:
        # What it does works: its durable on SURFACE (create, reset to a sequence, pull).
        await admin.jetstream().publish("surface.deribit.btc", b"surface", timeout=5)
        js = nc.jetstream()
        spec = ConsumerSpec("SURFACE", "archive-all", ["surface.>"])
        await ensure_consumer(js, spec)
        reset = await js.reset_consumer("SURFACE", "archive-all", 1)
        assert reset is not None
        sub = await js.pull_subscribe_bind("archive-all", "SURFACE")
        msgs = await sub.fetch(1, timeout=5)
        assert [m.data for m in msgs] == [b"surface"]
        denied = {"surface.deribit.btc": "SURFACE", "md.deribit.btc.book": "MD"}
        for subject in denied:
            await nc.publish(subject, b"fake")
        others = [
            "$JS.API.CONSUMER.CREATE.SURFACE.surface-all",
            "$JS.API.CONSUMER.RESET.IV.surface-all",
            "$JS.API.STREAM.PURGE.SURFACE",
        ]
        for subject in others:
            await nc.publish(subject, b"{}")
        await nc.flush()
        reported = await client.violations(len(denied) + len(others))
        for subject in [*denied, *others]:
            assert denied_publish(subject, reported), (subject, reported)
        assert (await admin.jetstream().stream_info("SURFACE")).state.messages == 1
    finally:
        await nc.close()


async def test_replies_reach_only_the_users_own_inbox(up_nats: UpNats) -> None:
    client = await connect_as(up_nats, "book-all")
    try:
        assert client.nc.new_inbox().startswith(inbox_prefix("book-all") + ".")
        await client.nc.subscribe(inbox_prefix("api") + ".>")
        await client.nc.subscribe("_INBOX.>")
        await client.nc.flush()
        reported = await client.violations(2)
        assert sum("subscription to" in e for e in reported) == 2, reported
    finally:
        await client.nc.close()


async def test_every_up_user_connects(up_nats: UpNats) -> None:
    for user in [ADMIN_USER, *(u.name for u in up_users(Config()))]:
        client = await connect_as(up_nats, user)
        assert client.nc.is_connected
        await client.nc.close()


async def test_a_service_user_checks_its_streams_instead_of_creating_them(
    up_nats: UpNats,
) -> None:
    client = await connect_as(up_nats, "book-all")
    cfg = Config(nats_user="book-all", nats_password=up_nats.passwords["book-all"])
    try:
        with pytest.raises(RuntimeError, match="stream MD does not exist and NATS user book-all"):
            await check_streams(client.nc.jetstream(), cfg, "book")
        assert not client.errors  # it asked only what it may ask
    finally:
        await client.nc.close()
    admin = await connect_as(up_nats, ADMIN_USER)
    try:
        await ensure_streams(
            admin.nc.jetstream(), default_stream_specs(Subjects(), StreamLimits.compact())
        )
    finally:
        await admin.nc.close()
    client = await connect_as(up_nats, "book-all")
    try:
        await check_streams(client.nc.jetstream(), cfg, "book")
        assert not client.errors
    finally:
        await client.nc.close()
