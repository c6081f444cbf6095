"""Latest surfaces and smiles in memory: the pure, synchronous core of the API.

The store never reads the wall clock: freshness takes "now" as an argument, and every
accepted change bumps a version counter. A stream remembers the version it last sent, so its
whole per-client state is one integer: whatever changed since then is sent as the *current*
state (latest wins), never as a backlog.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb
from volstream.wire import bool_field, length_delimited_field

VENUE_ALL = "all"

_VENUE = re.compile(r"^[a-z0-9_-]{1,32}$")
_CURRENCY = re.compile(r"^[A-Z0-9]{2,10}$")
# Smiles kept per (venue, currency): bounds memory if a publisher floods expiries.
MAX_SMILES_PER_SURFACE = 128


@dataclass(frozen=True, order=True)
class SurfaceKey:
    venue: str
    currency: str

    def __str__(self) -> str:
        return f"{self.venue}/{self.currency}"


def normalise_key(venue: str, currency: str) -> SurfaceKey | str:
    """The key for (venue, currency), or the reason it is not a valid one."""
    v = venue.strip().lower()
    c = currency.strip().upper()
    if not _VENUE.match(v):
        return f"venue {venue!r} is not a lowercase venue name"
    if not _CURRENCY.match(c):
        return f"currency {currency!r} is not a currency code like BTC"
    return SurfaceKey(v, c)


def without_quotes(surface: surface_pb.Surface) -> surface_pb.Surface:
    """A copy of surface with every slice's per-quote fit matrix left out."""
    light = surface_pb.Surface()
    light.CopyFrom(surface)
    for expiry_slice in light.slices:
        del expiry_slice.quotes[:]
    return light


@dataclass
class SurfaceEntry:
    """One stored surface and what the API needs about it. The surface is never mutated."""

    key: SurfaceKey
    surface: surface_pb.Surface
    # JetStream stream sequence (0 when unknown) and the time the message was stored.
    sequence: int
    stored_time_ns: int
    # Store version at which this entry last changed.
    changed_version: int
    _bytes_full: bytes | None = field(default=None, repr=False)
    _bytes_light: bytes | None = field(default=None, repr=False)
    _frame_full: bytes | None = field(default=None, repr=False)
    _frame_light: bytes | None = field(default=None, repr=False)

    @property
    def publish_time_ns(self) -> int:
        """Header publish time; the stream's store time when the publisher left it out."""
        return self.surface.header.publish_time_ns or self.stored_time_ns

    def age_ns(self, now_ns: int) -> int:
        return max(0, now_ns - self.publish_time_ns)

    def is_fresh(self, now_ns: int, stale_after_ns: int) -> bool:
        return self.age_ns(now_ns) <= stale_after_ns

    def surface_bytes(self, omit_quotes: bool) -> bytes:
        """Serialised surface, computed once per entry and shared by every client."""
        if omit_quotes:
            if self._bytes_light is None:
                self._bytes_light = without_quotes(self.surface).SerializeToString()
            return self._bytes_light
        if self._bytes_full is None:
            self._bytes_full = self.surface.SerializeToString()
        return self._bytes_full

    def surface_frame(self, omit_quotes: bool, field_number: int = 1) -> bytes:
        """The surface as a field-1 frame, the shape of `surfaces`/`surface` in responses."""
        if field_number != 1:
            return length_delimited_field(field_number, self.surface_bytes(omit_quotes))
        if omit_quotes:
            if self._frame_light is None:
                self._frame_light = length_delimited_field(1, self.surface_bytes(True))
            return self._frame_light
        if self._frame_full is None:
            self._frame_full = length_delimited_field(1, self.surface_bytes(False))
        return self._frame_full


@dataclass(frozen=True)
class ApplyOutcome:
    accepted: bool
    # Why it was not accepted ("" when accepted).
    reason: str = ""
    key: SurfaceKey | None = None


@dataclass(frozen=True)
class Freshness:
    age_ms: int
    fresh: bool


@dataclass(frozen=True)
class SmileKey:
    surface: SurfaceKey
    expiry_time_ns: int


class SurfaceStore:
    """Latest surface per (venue, currency) and latest IV smile per (venue, currency, expiry)."""

    def __init__(self) -> None:
        self.version = 0
        self._surfaces: dict[SurfaceKey, SurfaceEntry] = {}
        self._smiles: dict[SurfaceKey, dict[int, iv_pb.Smile]] = {}
        self.rejected = 0

    # updates -------------------------------------------------------------------------
    def apply_surface(
        self, surface: surface_pb.Surface, *, sequence: int = 0, stored_time_ns: int = 0
    ) -> ApplyOutcome:
        """Keep surface as the latest for its (venue, currency) unless it is older.

        Order is the stream sequence when known (the stream is the order of publication);
        without one, a lower revision of the same surface is refused.
        """
        key = normalise_key(surface.venue, surface.currency)
        if isinstance(key, str):
            self.rejected += 1
            return ApplyOutcome(False, key)
        current = self._surfaces.get(key)
        if current is not None:
            if sequence and current.sequence and sequence <= current.sequence:
                self.rejected += 1
                return ApplyOutcome(
                    False, f"{key}: stream sequence {sequence} <= stored {current.sequence}", key
                )
            if not sequence and surface.revision and surface.revision < current.surface.revision:
                self.rejected += 1
                return ApplyOutcome(
                    False,
                    f"{key}: revision {surface.revision} < stored {current.surface.revision}",
                    key,
                )
        self.version += 1
        self._surfaces[key] = SurfaceEntry(key, surface, sequence, stored_time_ns, self.version)
        return ApplyOutcome(True, "", key)

    def apply_smile(self, smile: iv_pb.Smile) -> ApplyOutcome:
        """Keep smile as the latest for its expiry; expired smiles of that surface are dropped."""
        key = normalise_key(smile.venue, smile.currency)
        if isinstance(key, str):
            self.rejected += 1
            return ApplyOutcome(False, key)
        if smile.expiry_time_ns <= 0:
            self.rejected += 1
            return ApplyOutcome(False, f"{key}: smile without expiry_time_ns", key)
        smiles = self._smiles.setdefault(key, {})
        smiles[smile.expiry_time_ns] = smile
        now_ns = smile.header.event_time_ns
        if now_ns:
            for expiry in [e for e in smiles if e <= now_ns]:
                del smiles[expiry]
        while len(smiles) > MAX_SMILES_PER_SURFACE:
            del smiles[min(smiles)]
        if smile.expiry_time_ns not in smiles:
            return ApplyOutcome(False, f"{key}: smile expired (expiry before its event time)", key)
        return ApplyOutcome(True, "", key)

    def apply_smile_batch(self, batch: iv_pb.SmileBatch) -> builtins.list[ApplyOutcome]:
        outcomes = []
        for smile in batch.smiles:
            if not smile.venue and not smile.currency:
                # Smiles inside a batch may leave venue/currency to the batch.
                filled = iv_pb.Smile()
                filled.CopyFrom(smile)
                filled.venue, filled.currency = batch.venue, batch.currency
                if not filled.HasField("header"):
                    filled.header.CopyFrom(batch.header)
                smile = filled
            outcomes.append(self.apply_smile(smile))
        return outcomes

    # queries -------------------------------------------------------------------------
    def latest(self, venue: str, currency: str) -> SurfaceEntry | None:
        key = normalise_key(venue, currency)
        return None if isinstance(key, str) else self._surfaces.get(key)

    def entry(self, key: SurfaceKey) -> SurfaceEntry | None:
        return self._surfaces.get(key)

    def list(self) -> builtins.list[SurfaceEntry]:
        return [self._surfaces[k] for k in sorted(self._surfaces)]

    def keys(self) -> builtins.list[SurfaceKey]:
        return sorted(self._surfaces)

    def venues(self) -> set[str]:
        return {k.venue for k in self._surfaces}

    def smile(self, key: SurfaceKey, expiry_time_ns: int) -> iv_pb.Smile | None:
        return self._smiles.get(key, {}).get(expiry_time_ns)

    def smile_by_label(self, key: SurfaceKey, expiry_label: str) -> iv_pb.Smile | None:
        for smile in self._smiles.get(key, {}).values():
            if smile.expiry_label == expiry_label:
                return smile
        return None

    def freshness(self, entry: SurfaceEntry, now_ns: int, stale_after_ns: int) -> Freshness:
        return Freshness(entry.age_ns(now_ns) // 1_000_000, entry.is_fresh(now_ns, stale_after_ns))

    def changed_since(
        self, version: int, matches: Callable[[SurfaceKey], bool]
    ) -> tuple[int, builtins.list[SurfaceEntry]]:
        """(current version, matching entries changed after version), latest state only."""
        changed = [
            e
            for k, e in sorted(self._surfaces.items())
            if e.changed_version > version and matches(k)
        ]
        return self.version, changed


@dataclass(frozen=True)
class StreamFilter:
    """Which surfaces a stream wants; None means every value."""

    venues: frozenset[str] | None = None
    currencies: frozenset[str] | None = None

    def __call__(self, key: SurfaceKey) -> bool:
        return (self.venues is None or key.venue in self.venues) and (
            self.currencies is None or key.currency in self.currencies
        )


def stream_message(frames: Iterable[bytes], is_snapshot: bool) -> bytes:
    """A serialised StreamSurfacesResponse from surface frames (field 1) and the flag (field 2)."""
    return b"".join(frames) + bool_field(2, is_snapshot)
