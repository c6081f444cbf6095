"""Event headers: the header of a venue event stamped in milliseconds, and the session base that
stamps ``header.sequence`` and guards against exceptions."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from svc_connector.kit.fields import ms_to_ns
from svc_connector.kit.frames import internal_error
from svc_connector.venues.base import FrameResult, VenueRequest
from volstream.v1 import common_pb2 as common_pb


def ms_header(timestamp_ms: int, receive_time_ns: int, source: str) -> common_pb.EventHeader:
    """Header of a venue event stamped in milliseconds (sequence left for the session)."""
    return common_pb.EventHeader(
        event_time_ns=ms_to_ns(timestamp_ms), receive_time_ns=receive_time_ns, source=source
    )


class StampingSession:
    """What every venue session shares (the base of each :class:`VenueSession`): the
    hot-then-checked dispatch with its switch and counters, the never-raise guard, request
    ids and header sequence stamping.

    ``header.sequence`` comes from a counter that runs for the session's lifetime (across
    reconnects), or from ``sequence()`` when given (a connector shares one counter between
    its connections so that (source, sequence) stays unique). A venue implements
    :meth:`_on_frame` (the checked path, in its ``session.py``), :meth:`_hot_frame` (the fast
    path, in its ``hot.py``) and :meth:`encode`, and names its (un)subscribe methods.
    """

    def __init__(
        self,
        *,
        first_request_id: int = 1,
        first_sequence: int = 1,
        sequence: Callable[[], int] | None = None,
    ) -> None:
        self._next_request_id = first_request_id
        self._next_sequence = first_sequence
        self._shared_sequence = sequence
        # Frames the hot path answered / left to the checked path (tests check that it keeps
        # taking the usual traffic).
        self.hot_hits = 0
        self.hot_misses = 0

    # False: every frame takes the checked path (tests and benches compare the two).
    hot_path: bool = True
    # The venue's (un)subscribe method names (what :meth:`encode` puts on the wire).
    subscribe_method = "subscribe"
    unsubscribe_method = "unsubscribe"

    def encode(self, request: VenueRequest) -> str:
        raise NotImplementedError

    def subscribe(self, channels: Iterable[str]) -> str:
        """Wire text subscribing ``channels`` (``params = {"channels": [...]}``)."""
        request = VenueRequest(self.subscribe_method, {"channels": list(channels)}, "subscribe")
        return self.encode(request)

    def unsubscribe(self, channels: Iterable[str]) -> str:
        request = VenueRequest(self.unsubscribe_method, {"channels": list(channels)}, "unsubscribe")
        return self.encode(request)

    def _take_request_id(self) -> int:
        """The id of the next request :meth:`encode` puts on the wire."""
        value = self._next_request_id
        self._next_request_id += 1
        return value

    def _take_sequence(self) -> int:
        if self._shared_sequence is not None:
            return self._shared_sequence()
        value = self._next_sequence
        self._next_sequence += 1
        return value

    def on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        """The hot path's answer (:meth:`_hot_frame`) when it has one, else the checked
        path's (:meth:`_on_frame`), stamped. Never raises."""
        if self.hot_path:
            try:
                hot = self._hot_frame(raw, receive_time_ns)
            except Exception:  # a hot path decides before it changes any state: fall back
                hot = None
            if hot is not None:
                self.hot_hits += 1
                return hot
            self.hot_misses += 1
        try:
            result = self._on_frame(raw, receive_time_ns)
        except Exception as exc:  # belt and braces: the client must never see an exception
            result = internal_error(raw, "session", exc)
        return self.stamp(result)

    def stamp(self, result: FrameResult) -> FrameResult:
        """Give every event of ``result`` the next header sequence (in event order)."""
        shared = self._shared_sequence
        for item in result.events:
            header = item.header or item.event_header()
            if header is None:
                continue
            if shared is not None:
                header.sequence = shared()
            else:
                header.sequence = self._next_sequence
                self._next_sequence += 1
        return result

    def _hot_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult | None:
        """The venue's fast path (``venues/<venue>/hot.py``): the stamped result the checked
        path would give, or None before touching any state. None here: no fast path."""
        return None

    def _on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        raise NotImplementedError
