"""Request/response matching: the requests a session encoded and still expects an answer to."""

from __future__ import annotations

from collections.abc import Iterable

from svc_connector.venues.base import FrameResult, VenueError, VenueRequest


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
