"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader, from npm) against the running API.

The npm packages are installed once into a cache folder (VOLSTREAM_NODE_CACHE, default
~/.cache/volstream-tests/node-grpc) so that later runs need no network.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api.conftest import Bus, StartApi, make_surface

REPO = Path(__file__).resolve().parents[2]
NODE_PACKAGES = ("@grpc/grpc-js@1", "@grpc/proto-loader@0")

NODE_SCRIPT = r"""
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const [protoRoot, address] = process.argv.slice(2);
const definition = loader.loadSync('volstream/v1/surface_service.proto', {
  includeDirs: [protoRoot], keepCase: true, longs: String, enums: String, defaults: true,
});
const v1 = grpc.loadPackageDefinition(definition).volstream.v1;
const client = new v1.SurfaceService(address, grpc.credentials.createInsecure());
const say = (kind, body) => console.log(JSON.stringify({kind, ...body}));

client.ListSurfaces({}, (err, listed) => {
  if (err) { say('error', {code: err.code, details: err.details}); process.exit(1); }
  say('list', {surfaces: listed.surfaces.map(s => [s.venue, s.currency, s.revision, s.fresh])});
  client.GetSurface({venue: 'deribit', currency: 'BTC', omit_quotes: true}, (err2, got) => {
    if (err2) { say('error', {code: err2.code, details: err2.details}); process.exit(1); }
    const s = got.surface;
    say('get', {revision: s.revision, expiries: s.slices.map(x => x.expiry_label),
                quotes: s.slices.reduce((n, x) => n + x.quotes.length, 0),
                atm: s.slices[0].metrics.atm_vol});
    client.GetSurface({venue: 'kraken', currency: 'BTC'}, (err3) => {
      say('bad', {code: err3.code, details: err3.details});
      const call = client.StreamSurfaces({venues: ['deribit'], omit_quotes: true});
      let n = 0;
      call.on('data', (m) => {
        say('stream', {is_snapshot: m.is_snapshot, revisions: m.surfaces.map(x => x.revision)});
        if (++n === 2) { call.cancel(); client.close(); }
      });
      call.on('error', (e) => {
        if (e.code !== grpc.status.CANCELLED) say('error', {code: e.code});
      });
    });
  });
});
"""


def node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node.js client test")
    cache = Path(
        os.environ.get(
            "VOLSTREAM_NODE_CACHE", Path.home() / ".cache" / "volstream-tests" / "node-grpc"
        )
    )
    if not (cache / "node_modules" / "@grpc" / "grpc-js").is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--prefix",
                str(cache),
                *NODE_PACKAGES,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    return cache / "node_modules"


async def test_node_client_lists_gets_and_streams(
    bus: Bus, start_api: StartApi, tmp_path: Path
) -> None:
    modules = await asyncio.to_thread(node_modules)
    await bus.publish_surface(make_surface("deribit", "BTC", 11))
    await bus.publish_surface(make_surface("okx", "ETH", 2))
    api = await start_api()
    script = tmp_path / "client.js"
    script.write_text(NODE_SCRIPT)
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        str(REPO / "proto"),
        api.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert proc.stdout is not None
    answers: dict[str, list[dict[str, object]]] = {}
    try:
        async with asyncio.timeout(20):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    break
                answer = json.loads(line)
                answers.setdefault(str(answer["kind"]), []).append(answer)
                if answer["kind"] == "stream" and answer["is_snapshot"]:
                    await bus.publish_surface(make_surface("deribit", "BTC", 12))
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert proc.returncode == 0, stderr
    assert "error" not in answers, answers["error"]
    assert answers["list"][0]["surfaces"] == [
        ["deribit", "BTC", "11", True],
        ["okx", "ETH", "2", True],
    ]
    got = answers["get"][0]
    assert got["revision"] == "11" and got["quotes"] == 0 and got["atm"] == pytest.approx(0.6)
    assert got["expiries"] == ["2030-01-04", "2030-01-11", "2030-01-18", "2030-01-25"]
    bad = answers["bad"][0]
    assert bad["code"] == 3 and "unknown venue 'kraken'" in str(bad["details"])  # INVALID_ARGUMENT
    assert [(a["is_snapshot"], a["revisions"]) for a in answers["stream"]] == [
        (True, ["11"]),
        (False, ["12"]),
    ]
