"""Subscription planning: channel groups spread over connections within a per-connection budget
and a connection cap (stable assignments: a listing restarts nothing), subscribe batches, and
listed/delisted symbol diffs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class ConnectionDiff:
    """What one connection must subscribe and unsubscribe after an allocation update."""

    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AllocationDiff:
    # index -> diff; indexes >= the previous connection count are new connections.
    per_connection: dict[int, ConnectionDiff] = field(default_factory=dict)
    connections: int = 0
    # channels placed beyond the per-connection budget because the connection cap was hit.
    over_budget: int = 0

    def for_connection(self, index: int) -> ConnectionDiff:
        return self.per_connection.setdefault(index, ConnectionDiff())


class ChannelAllocator:
    """Assigns channel *groups* (e.g. one instrument's book + ticker) to connections.

    A group stays on its connection for its whole life, so a new listing never moves or
    restarts anything: it goes to the least-loaded connection, opening a new one (up to
    ``max_connections``) when the total would exceed the budget. When the cap is reached
    the budget is exceeded rather than channels dropped (counted in ``over_budget``).
    """

    def __init__(self, max_channels_per_connection: int, max_connections: int) -> None:
        if max_channels_per_connection < 1 or max_connections < 1:
            raise ValueError("channel budget and connection cap must be positive")
        self.max_channels_per_connection = max_channels_per_connection
        self.max_connections = max_connections
        self._loads: list[int] = []
        self._groups: dict[str, tuple[int, tuple[str, ...]]] = {}

    @property
    def connections(self) -> int:
        return len(self._loads)

    def loads(self) -> list[int]:
        return list(self._loads)

    def channels_of(self, index: int) -> list[str]:
        return [
            channel
            for conn, channels in self._groups.values()
            if conn == index
            for channel in channels
        ]

    def update(self, desired: Mapping[str, Sequence[str]]) -> AllocationDiff:
        """Move to ``desired`` (group key -> channels); returns the per-connection changes."""
        diff = AllocationDiff()
        for key in sorted(set(self._groups) - set(desired)):
            index, channels = self._groups.pop(key)
            self._loads[index] -= len(channels)
            diff.for_connection(index).unsubscribe.extend(channels)
        new_keys: list[str] = []
        for key in sorted(desired):
            wanted = tuple(desired[key])
            held = self._groups.get(key)
            if held is None:
                new_keys.append(key)
            elif held[1] != wanted:
                index, channels = held
                gone = [c for c in channels if c not in wanted]
                added = [c for c in wanted if c not in channels]
                diff.for_connection(index).unsubscribe.extend(gone)
                diff.for_connection(index).subscribe.extend(added)
                self._loads[index] += len(added) - len(gone)
                self._groups[key] = (index, wanted)
        total = sum(self._loads) + sum(len(desired[k]) for k in new_keys)
        needed = min(
            self.max_connections, max(1, math.ceil(total / self.max_channels_per_connection))
        )
        while len(self._loads) < needed:
            self._loads.append(0)
        for key in new_keys:
            channels = tuple(desired[key])
            index = min(range(len(self._loads)), key=lambda i: (self._loads[i], i))
            if self._loads[index] + len(channels) > self.max_channels_per_connection:
                if len(self._loads) < self.max_connections:
                    self._loads.append(0)
                    index = len(self._loads) - 1
                else:
                    diff.over_budget += len(channels)
            self._loads[index] += len(channels)
            self._groups[key] = (index, channels)
            diff.for_connection(index).subscribe.extend(channels)
        diff.connections = len(self._loads)
        return diff


def batched(items: Sequence[str], size: int) -> Iterator[list[str]]:
    """Consecutive batches of at most ``size`` items (one subscribe request each)."""
    if size < 1:
        raise ValueError("batch size must be positive")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def diff_symbols(previous: Iterable[str], current: Iterable[str]) -> tuple[list[str], list[str]]:
    """(listed, delisted), each sorted."""
    before, after = set(previous), set(current)
    return sorted(after - before), sorted(before - after)
