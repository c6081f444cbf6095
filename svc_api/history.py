"""Surface at a past time, read from the SURFACE stream with JetStream direct get.

"At or before T" is the last message on `surface.<venue>.<ccy>` stored at or before T: one
batched direct get `{"multi_last": [subject], "up_to_time": T + 1ns}` (up_to_time is
exclusive). When there is none, a second direct get (`next_by_subj` from sequence 0) finds
where that surface's history starts, for the error message. Time is the stream's store
time: what a client of the API could have seen at T.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from svc_api.requests import format_time_ns
from volstream.config import parse_rfc3339_ns

DIRECT_GET = "$JS.API.DIRECT.GET."


@dataclass(frozen=True)
class StoredMessage:
    subject: str
    sequence: int
    stored_time_ns: int
    data: bytes


class HistoryNotFound(Exception):
    """No surface at or before the time; the message says where history starts."""


class HistoryUnavailable(Exception):
    """The stream cannot be queried (NATS down, stream missing, direct get disabled)."""


def _status(msg: Any) -> str | None:
    headers = msg.headers or {}
    status: str | None = headers.get("Status")
    return status


def _header(msg: Any, name: str) -> str:
    # nats-py keys some status headers by an Enum whose value is the header name.
    for key, value in (msg.headers or {}).items():
        if str(getattr(key, "value", key)) == name:
            return str(value)
    return ""


def _stored(msg: Any) -> StoredMessage:
    headers = msg.headers or {}
    return StoredMessage(
        subject=headers.get("Nats-Subject", ""),
        sequence=int(headers.get("Nats-Sequence", "0")),
        stored_time_ns=parse_rfc3339_ns(headers["Nats-Time-Stamp"]),
        data=msg.data,
    )


class SurfaceHistory:
    def __init__(self, nc: Any, stream: str, timeout_s: float = 3.0) -> None:
        self.nc = nc
        self.stream = stream
        self.timeout_s = timeout_s

    async def _direct_get(self, request: dict[str, Any]) -> Any:
        import nats.errors

        try:
            return await self.nc.request(
                DIRECT_GET + self.stream, json.dumps(request).encode(), timeout=self.timeout_s
            )
        except nats.errors.NoRespondersError as exc:
            raise HistoryUnavailable(
                f"history stream {self.stream} does not exist or has allow_direct off"
            ) from exc
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as exc:
            raise HistoryUnavailable(f"history query to {self.stream} failed: {exc!r}") from exc

    async def at_or_before(self, subject: str, label: str, time_ns: int) -> StoredMessage:
        reply = await self._direct_get(
            {"multi_last": [subject], "up_to_time": format_time_ns(time_ns + 1), "batch": 1}
        )
        status = _status(reply)
        if status is None and reply.headers and "Nats-Sequence" in reply.headers:
            return _stored(reply)
        if status not in (None, "404", "204"):
            desc = _header(reply, "Description")
            raise HistoryUnavailable(f"history query failed: {status} {desc}".strip())
        first = await self.first(subject)
        when = format_time_ns(time_ns)
        if first is None:
            raise HistoryNotFound(f"no {label} surface has been published (no history)")
        raise HistoryNotFound(
            f"no {label} surface at or before {when}: its history starts at "
            f"{format_time_ns(first.stored_time_ns)} (stream sequence {first.sequence})"
        )

    async def first(self, subject: str) -> StoredMessage | None:
        reply = await self._direct_get({"seq": 0, "next_by_subj": subject})
        status = _status(reply)
        if status == "404":
            return None
        if status is not None:
            raise HistoryUnavailable(f"history query failed: {status}")
        return _stored(reply)
