"""The `volstream` command.

    volstream up [--sim]             every service on this machine (embedded NATS by default)
    volstream svc NAME               one service (what a Kubernetes container runs)
    volstream surface --venue V --currency C   term structure and smiles as a table
    volstream watch                  follow the surface stream live
    volstream replay --from T1 [--to T2] --namespace NAME [settings]   replay market data
    volstream diff A B [--tolerance VOLPTS]   compare two runs' surfaces
    volstream history --venue V --currency C --tenor 30 --from T1 --to T2 [--out f.csv]
                                     a smile's ATM, RR, BF over time, from the archive

Flags override VOLSTREAM_* environment variables, which override defaults. Any invalid flag
or value exits with status 2 and a message naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from volstream.config import (
    IV_FORWARD_POLICIES,
    KNOWN_VENUES,
    SERVICES,
    SURFACE_MODELS,
    Config,
    ConfigError,
    from_env,
    parse_list,
    parse_partitions,
    parse_utc_ns,
)

if TYPE_CHECKING:
    import grpc

# Where each service's `run(cfg)` lives.
SERVICE_MODULES = {
    "connector": "svc_connector.service",
    "book": "svc_book.service",
    "iv": "svc_iv.service",
    "surface": "svc_surface.service",
    "archive": "svc_archive.service",
    "api": "svc_api.service",
    "sim": "simulator.service",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own exit status for usage errors
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not in 0..65535")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    """Seconds from '90', '30s', '5m', '1h', '1d'."""
    raw = text.strip().lower()
    scale = _UNITS_S.get(raw[-1:])
    number = raw[:-1] if scale is not None else raw
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 30s, 5m, 1h or 1d"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats", dest="nats_url", help="NATS URL (default: embedded nats-server)")
    p.add_argument("--namespace", help="subject/stream namespace prefix, e.g. replay.run1")
    p.add_argument("--data-dir", type=Path, help="state directory (default .volstream)")
    p.add_argument("--venues", help=f"comma list of venues ({','.join(KNOWN_VENUES)})")
    p.add_argument("--currencies", help="comma list of currencies (default BTC,ETH)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grpc-port", type=_port, help="gRPC port (default 50051)")
    p.add_argument("--http-port", type=_port, help="HTTP port: metrics, dashboard (default 8080)")
    p.add_argument(
        "--bind",
        dest="bind_host",
        help="address gRPC and HTTP listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--sim-rate", type=_positive_float, help="simulator messages/s per venue (default 2000)"
    )
    p.add_argument(
        "--sim-start",
        help="simulator event time at start, ISO-8601 UTC (e.g. 2026-12-31T07:59:00Z; "
        "default now): its expiry calendar follows",
    )
    p.add_argument(
        "--sim-scenario",
        help="simulator market scenario: quiet (default), trending, jump, volshock, with "
        "overrides as NAME:key=value,... (docs/simulator.md section 2)",
    )
    p.add_argument("--testnet", action="store_true", default=None, help="venue testnet URLs")
    _add_stage_settings(p)
    p.add_argument("--api-token", help="require 'authorization: Bearer TOKEN' on gRPC calls")
    p.add_argument("--tls-cert", type=Path, help="gRPC TLS certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="gRPC TLS private key (PEM)")


def _add_stage_settings(p: argparse.ArgumentParser) -> None:
    """The settings of the derived stages (live, and what a replay may change)."""
    p.add_argument(
        "--surface-interval-ms", type=_positive_int, help="surface refit cadence (event time)"
    )
    p.add_argument(
        "--surface-smoothing-s",
        type=float,
        help="half life of the surface's temporal smoothing in seconds (0: off)",
    )
    p.add_argument("--surface-model", choices=SURFACE_MODELS, help="svi (default) or ssvi")
    p.add_argument("--iv-interval-ms", type=_positive_int, help="IV flush cadence (event time)")
    p.add_argument(
        "--iv-forward-policy",
        choices=IV_FORWARD_POLICIES,
        help="forward each price is solved on: current (default, the venues') or quote "
        "(the forward when the price last changed)",
    )
    p.add_argument(
        "--book-stale-ms", type=_positive_int, help="a book is stale after this (event time)"
    )
    p.add_argument("--consolidate", choices=("auto", "only", "off"), help="consolidated surfaces")


def _add_history(sub: Any) -> None:
    """`replay` and `diff` (their work lives in the replay package, loaded by name)."""
    rp = sub.add_parser(
        "replay",
        help="run a range of market data through book, IV and surface into a namespace",
        description="Replay MD stored in [--from, --to] through the book, IV and surface "
        "stages with the given settings into NAMESPACE.* subjects and streams of their own, "
        "as fast as the machine allows. Times: ISO-8601 UTC (stored time in MD).",
    )
    rp.add_argument("--from", dest="from_time", required=True, help="start, e.g. 2026-12-07T09:00Z")
    rp.add_argument("--to", dest="to_time", help="end (default: the last message in MD now)")
    rp.add_argument(
        "--namespace", required=True, help="where outputs go, e.g. replay.run1 (not live)"
    )
    rp.add_argument("--replace", action="store_true", help="delete the namespace's streams first")
    rp.add_argument("--quiet", action="store_true", help="no progress line")
    rp.add_argument(
        "--workers",
        type=int,
        help="partition worker processes (default: one per core; 1: all in this process)",
    )
    rp.add_argument("--nats", dest="nats_url", help="NATS URL (default: from <data-dir>/up.json)")
    rp.add_argument("--data-dir", type=Path, help="state directory of `up` (default .volstream)")
    rp.add_argument("--venues", help=f"comma list of venues ({','.join(KNOWN_VENUES)})")
    rp.add_argument("--currencies", help="comma list of currencies (default BTC,ETH)")
    _add_stage_settings(rp)
    dp = sub.add_parser(
        "diff",
        help="compare the surfaces of two runs (namespaces, 'live', archive directories)",
        description="Line up the surfaces of A and B by event time and print, per venue, "
        "currency and expiry, the largest differences. Exit status 1 past --tolerance.",
    )
    dp.add_argument(
        "a", help="a namespace, 'live', or an archive directory (e.g. .volstream/archive)"
    )
    dp.add_argument("b", help="a namespace, 'live', or an archive directory")
    dp.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="largest accepted |dATM|, |dRR25|, |dBF25| in vol points (default 0)",
    )
    dp.add_argument("--nats", dest="nats_url", help="NATS URL (default: from <data-dir>/up.json)")
    dp.add_argument("--data-dir", type=Path, help="state directory of `up` (default .volstream)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="volstream", description="Real-time crypto options volatility surfaces.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = sub.add_parser("up", help="run the whole system on this machine")
    up.add_argument("--sim", action="store_true", help="run offline against the simulator")
    _add_common(up)
    _add_runtime(up)

    svc = sub.add_parser("svc", help="run one service")
    svc.add_argument("name", choices=SERVICES)
    svc.add_argument("--partitions", help="venue:CCY list this replica owns (default all)")
    svc.add_argument("--metrics-port", type=_port, help="Prometheus port (0: none)")
    svc.add_argument("--sim-url", help="simulator base URL (connectors) ")
    svc.add_argument("--port", type=_port, default=None, help="listen port (sim)")
    _add_common(svc)
    _add_runtime(svc)

    surface = sub.add_parser("surface", help="print a surface's term structure and smiles")
    surface.add_argument("--venue", required=True)
    surface.add_argument("--currency", required=True)
    surface.add_argument("--server", default="127.0.0.1:50051")
    surface.add_argument("--token")

    _add_history(sub)

    watch = sub.add_parser("watch", help="follow surface updates live")
    watch.add_argument("--venues", default="")
    watch.add_argument("--currencies", default="")
    watch.add_argument("--server", default="127.0.0.1:50051")
    watch.add_argument("--min-interval-ms", type=int, default=1000)
    watch.add_argument("--token")

    history = sub.add_parser(
        "history", help="a smile's ATM, RR and BF over time (from the archive)"
    )
    history.add_argument("--venue", required=True)
    history.add_argument("--currency", required=True)
    which = history.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenor", type=_positive_int, help="fixed tenor in days, e.g. 30")
    which.add_argument("--expiry", help="expiry as an ISO date, e.g. 2026-03-27")
    history.add_argument("--from", dest="start", required=True, help="ISO-8601 UTC start")
    history.add_argument("--to", dest="end", required=True, help="ISO-8601 UTC end (exclusive)")
    history.add_argument(
        "--step", type=_duration, default=0, help="one point per step: 30s, 5m, 1h, 1d"
    )
    history.add_argument("--out", type=Path, help="write CSV (.csv) or Parquet (.parquet)")
    history.add_argument("--server", default="127.0.0.1:50051")
    history.add_argument("--token")
    return parser


_FLAG_TO_FIELD: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "nats_url": ("nats_url", str),
    "namespace": ("namespace", str),
    "data_dir": ("data_dir", Path),
    "venues": ("venues", lambda s: tuple(v.lower() for v in parse_list(s))),
    "currencies": ("currencies", lambda s: tuple(c.upper() for c in parse_list(s))),
    "log_level": ("log_level", str),
    "grpc_port": ("grpc_port", int),
    "http_port": ("http_port", int),
    "bind_host": ("bind_host", str),
    "metrics_port": ("metrics_port", int),
    "sim_rate": ("sim_rate", float),
    "sim_start": ("sim_start", str),
    "sim_scenario": ("sim_scenario", str),
    "testnet": ("testnet", bool),
    "surface_interval_ms": ("surface_interval_ms", int),
    "surface_smoothing_s": ("surface_smoothing_s", float),
    "surface_model": ("surface_model", str),
    "iv_interval_ms": ("iv_interval_ms", int),
    "iv_forward_policy": ("iv_forward_policy", str),
    "book_stale_ms": ("book_stale_ms", int),
    "consolidate": ("consolidate", str),
    "api_token": ("api_token", str),
    "tls_cert": ("tls_cert", Path),
    "tls_key": ("tls_key", Path),
    "sim_url": ("sim_url", str),
    "partitions": ("partitions", parse_partitions),
}


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    cfg = from_env(base=base)
    changes: dict[str, Any] = {}
    for flag, (name, conv) in _FLAG_TO_FIELD.items():
        value = getattr(args, flag, None)
        if value is not None:
            changes[name] = conv(value)
    return replace(cfg, **changes).validated()


def setup_logging(level: str, prefix: str = "") -> None:
    fmt = f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)


# The API's commands (`surface`, `watch`): grpc and the client load only when they run.
def _rpc_error(exc: grpc.RpcError) -> int:
    import grpc

    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "ERROR"
    print(f"volstream: {name}: {details}", file=sys.stderr)
    return 2 if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED) else 1


def surface_command(
    server: str,
    venue: str,
    currency: str,
    token: str | None = None,
    *,
    tls: bool = False,
    ca_file: Path | None = None,
    expiry: str | None = None,
) -> int:
    """`volstream surface`: term structure (and one smile with expiry=) as tables."""
    import grpc

    from volstream.cli_render import render_smile, render_term_structure
    from volstream.client import SurfaceClient

    roots = ca_file.read_bytes() if ca_file else None
    try:
        with SurfaceClient(server, token=token, tls=tls, root_certificates=roots) as client:
            if expiry:
                answer = client.get_smile(venue, currency, expiry)
                print(
                    render_smile(answer.slice, answer.smile if answer.HasField("smile") else None)
                )
            else:
                print(render_term_structure(client.get_surface(venue, currency, omit_quotes=True)))
    except grpc.RpcError as exc:
        return _rpc_error(exc)
    return 0


def watch_command(
    server: str,
    venues: Sequence[str],
    currencies: Sequence[str],
    min_interval_ms: int = 1000,
    token: str | None = None,
    *,
    tls: bool = False,
    ca_file: Path | None = None,
    max_messages: int | None = None,
) -> int:
    """`volstream watch`: one line per surface update; reconnects while the server is away."""
    import grpc

    from volstream.cli_render import render_update_line
    from volstream.client import SurfaceClient

    roots = ca_file.read_bytes() if ca_file else None
    backoff_s = 0.5
    seen = 0
    with SurfaceClient(server, token=token, tls=tls, root_certificates=roots) as client:
        while True:
            try:
                stream = client.stream(venues, currencies, min_interval_ms, omit_quotes=True)
                with stream:
                    for message in stream:
                        backoff_s = 0.5
                        for surface in message.surfaces:
                            print(render_update_line(surface), flush=True)
                        seen += 1
                        if max_messages is not None and seen >= max_messages:
                            return 0
            except KeyboardInterrupt:
                return 0
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    return _rpc_error(exc)
                print(
                    f"volstream: server unavailable; retrying in {backoff_s:.1f}s", file=sys.stderr
                )
            else:
                print("volstream: stream ended by the server; reconnecting", file=sys.stderr)
            try:
                time.sleep(backoff_s)
            except KeyboardInterrupt:
                return 0
            backoff_s = min(backoff_s * 2, 10.0)


HISTORY_COLUMNS = (
    "time",
    "revision",
    "atm_vol",
    "rr25",
    "bf25",
    "rr10",
    "bf10",
    "forward_usd",
    "time_to_expiry_years",
)


def _history_columns(points: Sequence[Any]) -> dict[str, list[Any]]:
    return {
        "time": [p.time.ToNanoseconds() for p in points],
        "revision": [p.revision for p in points],
        **{m: [getattr(p.metrics, m) for p in points] for m in HISTORY_COLUMNS[2:7]},
        "forward_usd": [p.forward_usd for p in points],
        "time_to_expiry_years": [p.time_to_expiry_years for p in points],
    }


def write_history(points: Sequence[Any], out: Path) -> None:
    """CSV (time as RFC 3339 with ns) or Parquet (time as a UTC ns timestamp), fractions."""
    columns = _history_columns(points)
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"time": pa.timestamp("ns", tz="UTC"), "revision": pa.uint64()}
        schema = pa.schema([(c, types.get(c, pa.float64())) for c in HISTORY_COLUMNS])
        pq.write_table(pa.Table.from_pydict(columns, schema=schema), out, compression="zstd")
        return
    import csv

    from volstream.cli_render import _time

    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HISTORY_COLUMNS)
        for i, t in enumerate(columns["time"]):
            row = [columns[c][i] for c in HISTORY_COLUMNS]
            row[0] = _time(t).replace(" ", "T")
            writer.writerow(row)


def history_command(
    server: str,
    venue: str,
    currency: str,
    *,
    start: str,
    end: str,
    tenor_days: int | None = None,
    expiry: str | None = None,
    step_s: float = 0.0,
    out: Path | None = None,
    token: str | None = None,
) -> int:
    """`volstream history`: the points as a table, or into a CSV / Parquet file."""
    import grpc

    from volstream.cli_render import render_history
    from volstream.client import SurfaceClient

    try:
        start_ns = parse_utc_ns(start, "--from")
        end_ns = parse_utc_ns(end, "--to")
    except ConfigError as exc:
        print(f"volstream: error: {exc}", file=sys.stderr)
        return 2
    if start_ns >= end_ns:
        print(f"volstream: error: --from {start} is not before --to {end}", file=sys.stderr)
        return 2
    if out is not None and out.suffix not in (".csv", ".parquet"):
        print(f"volstream: error: --out {out}: write a .csv or a .parquet file", file=sys.stderr)
        return 2
    try:
        with SurfaceClient(server, token=token) as client:
            points = client.metric_history(
                venue,
                currency,
                start_ns,
                end_ns,
                tenor_days=tenor_days,
                expiry=expiry,
                step_s=step_s,
            )
    except grpc.RpcError as exc:
        return _rpc_error(exc)
    if out is None:
        print(render_history(points))
    else:
        write_history(points, out)
        print(f"{len(points)} points written to {out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configured = ("up", "svc", "replay")
        cfg = config_from_args(args) if args.command in configured else from_env().validated()
    except ConfigError as exc:
        parser.exit(2, f"volstream: error: {exc}\n")

    if args.command == "up":
        from volstream.supervisor import run_up

        setup_logging(cfg.log_level, "[up] ")
        raise SystemExit(run_up(cfg, sim=args.sim))
    if args.command == "svc":
        setup_logging(cfg.log_level)
        from volstream.profiling import profiled

        # Profiling (a developer's switch) starts before the imports: its signals are safe
        # to send as soon as the process exists.
        with contextlib.suppress(KeyboardInterrupt), profiled(args.name):
            module = importlib.import_module(SERVICE_MODULES[args.name])
            kwargs: dict[str, Any] = {}
            if args.name == "sim" and args.port is not None:
                kwargs["port"] = args.port
            asyncio.run(module.run(cfg, **kwargs))
        return
    if args.command in ("replay", "diff"):
        setup_logging("WARNING")
        history = importlib.import_module("replay.cli")
        if args.command == "replay":
            raise SystemExit(history.replay_command(args, cfg))
        raise SystemExit(history.diff_command(args, cfg))
    if args.command == "surface":
        raise SystemExit(surface_command(args.server, args.venue, args.currency, args.token))
    if args.command == "history":
        raise SystemExit(
            history_command(
                args.server,
                args.venue,
                args.currency,
                start=args.start,
                end=args.end,
                tenor_days=args.tenor,
                expiry=args.expiry,
                step_s=args.step,
                out=args.out,
                token=args.token,
            )
        )
    if args.command == "watch":
        raise SystemExit(
            watch_command(
                args.server,
                parse_list(args.venues),
                parse_list(args.currencies),
                args.min_interval_ms,
                args.token,
            )
        )


if __name__ == "__main__":
    main()
