"""The lifecycle of one websocket connection: the allowed state changes, with reasons."""

from __future__ import annotations

from dataclasses import dataclass

from svc_connector.venues.base import ConnectionState

_ALLOWED: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.IDLE: frozenset({ConnectionState.CONNECTING, ConnectionState.STOPPED}),
    ConnectionState.CONNECTING: frozenset(
        {ConnectionState.SUBSCRIBING, ConnectionState.BACKING_OFF, ConnectionState.STOPPED}
    ),
    ConnectionState.SUBSCRIBING: frozenset(
        {ConnectionState.LIVE, ConnectionState.BACKING_OFF, ConnectionState.STOPPED}
    ),
    ConnectionState.LIVE: frozenset(
        {ConnectionState.SUBSCRIBING, ConnectionState.BACKING_OFF, ConnectionState.STOPPED}
    ),
    ConnectionState.BACKING_OFF: frozenset({ConnectionState.CONNECTING, ConnectionState.STOPPED}),
    ConnectionState.STOPPED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class StateChange:
    previous: ConnectionState
    current: ConnectionState
    reason: str


class ConnectionStateMachine:
    """Tracks one connection's state; refuses transitions the lifecycle does not allow.

    A refused transition is returned as ``None`` and counted in ``refused`` (a bug indicator,
    not an exception: the client keeps running).
    """

    def __init__(self) -> None:
        self.state = ConnectionState.IDLE
        self.changes = 0
        self.refused = 0

    def transition(self, new: ConnectionState, reason: str) -> StateChange | None:
        if new == self.state:
            return None
        if new not in _ALLOWED[self.state]:
            self.refused += 1
            return None
        change = StateChange(self.state, new, reason)
        self.state = new
        self.changes += 1
        return change
