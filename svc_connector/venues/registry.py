"""The one place that lists every venue adapter.

Each entry maps the venue name (a lowercase subject token) to the module that exposes
``ADAPTER: VenueAdapter`` (see ``base.py``). Modules are imported on first use so that a
process running one venue does not import the others.

To add a venue: build ``svc_connector/venues/<venue>/`` with the standard file set and add
one line to ``_ADAPTER_MODULES``.
"""

from __future__ import annotations

import importlib
from typing import Final

from svc_connector.venues.base import VenueAdapter

_ADAPTER_MODULES: Final[dict[str, str]] = {
    "deribit": "svc_connector.venues.deribit",
    "okx": "svc_connector.venues.okx",
    "bybit": "svc_connector.venues.bybit",
    "binance": "svc_connector.venues.binance",
}

_loaded: dict[str, VenueAdapter] = {}


def names() -> tuple[str, ...]:
    """Registered venue names, sorted."""
    return tuple(sorted(_ADAPTER_MODULES))


def get(name: str) -> VenueAdapter:
    """The adapter of ``name`` (case-insensitive); ``KeyError`` naming the known venues."""
    key = name.strip().lower()
    adapter = _loaded.get(key)
    if adapter is not None:
        return adapter
    module_name = _ADAPTER_MODULES.get(key)
    if module_name is None:
        raise KeyError(f"unknown venue {name!r}; known: {', '.join(names())}")
    adapter = getattr(importlib.import_module(module_name), "ADAPTER", None)
    if not isinstance(adapter, VenueAdapter) or adapter.name != key:
        raise TypeError(f"{module_name}.ADAPTER is not the VenueAdapter of {key!r}")
    _loaded[key] = adapter
    return adapter


def all_adapters() -> dict[str, VenueAdapter]:
    """Every registered adapter, by name (imports them all)."""
    return {name: get(name) for name in names()}
