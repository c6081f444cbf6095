"""Request/response matching: the requests a session encoded and still expects an answer to."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from svc_connector.kit.fields import safe_token
from svc_connector.venues.base import FrameResult, RequestAck, VenueError, VenueRequest


def request_channels(request: VenueRequest) -> list[str]:
    """The channels of a (un)subscribe request (``params = {"channels": [...]}``), else []."""
    value = request.params.get("channels")
    return [str(channel) for channel in value] if isinstance(value, list) else []


class PendingRequests:
    """Requests a session encoded and still expects an answer to (bounded, oldest dropped)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._requests: dict[int | str, tuple[str, tuple[str, ...]]] = {}

    def add(self, request_id: int | str, method: str, channels: Iterable[str] = ()) -> None:
        if len(self._requests) >= self._limit:
            self._requests.pop(next(iter(self._requests)))
        self._requests[request_id] = (method, tuple(channels))

    def get(self, request_id: int | str | None) -> tuple[str, tuple[str, ...]] | None:
        return None if request_id is None else self._requests.get(request_id)

    def pop(self, request_id: int | str | None) -> tuple[str, tuple[str, ...]] | None:
        return None if request_id is None else self._requests.pop(request_id, None)

    def clear(self) -> None:
        self._requests.clear()

    def __len__(self) -> int:
        return len(self._requests)


def name_venue_errors(result: FrameResult, pending: PendingRequests) -> None:
    """Attach the method and channels of the request each venue error answers (if known)."""
    named: list[VenueError] = []
    for error in result.venue_errors:
        request = pending.pop(error.request_id) if not error.method else None
        if request is None:
            named.append(error)
        else:
            named.append(
                VenueError(error.code, error.message, error.request_id, request[0], request[1])
            )
    result.venue_errors = named


def match_acks(
    result: FrameResult,
    pending: PendingRequests,
    confirm: Callable[[RequestAck, tuple[str, ...]], None],
) -> None:
    """Name each ack of ``result`` with the method of the request it answers (popped from
    ``pending``) and count it (``response.<method>``, else ``response.unmatched``); each
    matched one goes with the channels it asked for to ``confirm``, which records what the
    venue (un)subscribed. Then the venue errors are named likewise."""
    acks: list[RequestAck] = []
    for ack in result.acks:
        request = pending.pop(ack.request_id)
        if request is None:
            result.counts["response.unmatched"] += 1
            acks.append(ack)
            continue
        method, channels = request
        named = RequestAck(ack.request_id, method, ack.result)
        acks.append(named)
        result.counts[f"response.{safe_token(method)}"] += 1
        confirm(named, channels)
    result.acks = acks
    name_venue_errors(result, pending)
