"""Contracts: generated code matches the protos, buf lint is clean, every event has a header."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from google.protobuf.message import Message

from volstream import codegen
from volstream.v1 import book_pb2, iv_pb2, market_data_pb2, surface_pb2

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_in_sync() -> None:
    assert codegen.check() == []


def test_buf_lint_is_clean() -> None:
    buf = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_event_and_batch_carries_the_header() -> None:
    events: list[type[Message]] = [
        market_data_pb2.InstrumentSet,
        market_data_pb2.BookSnapshot,
        market_data_pb2.BookDelta,
        market_data_pb2.BookReset,
        market_data_pb2.VenueTicker,
        market_data_pb2.IndexPrice,
        market_data_pb2.VolatilityIndex,
        market_data_pb2.MarketDataBatch,
        book_pb2.TopOfBook,
        book_pb2.TopOfBookBatch,
        iv_pb2.Smile,
        iv_pb2.SmileBatch,
        surface_pb2.Surface,
    ]
    for cls in events:
        field = cls.DESCRIPTOR.fields_by_name.get("header")
        assert field is not None, cls.__name__
        assert field.message_type is not None, cls.__name__
        assert field.message_type.full_name == "volstream.v1.EventHeader"
    header = {f.name: f.type for f in market_data_pb2.BookDelta().header.DESCRIPTOR.fields}
    int64 = 3
    for name in ("event_time_ns", "receive_time_ns", "publish_time_ns"):
        assert header[name] == int64, name
    assert {"source", "sequence"} <= header.keys()
