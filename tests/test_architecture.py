"""The layout says what the architecture is: the README's room map equals the tree, every venue
adapter has the same file set, and the venue lists agree. (The import rules themselves are
the import-linter contracts in pyproject.toml, run by `./vs test`.)"""

from __future__ import annotations

import re
import subprocess

from svc_connector.venues import registry
from tests.conftest import REPO
from volstream.config import KNOWN_VENUES

# Every adapter: the package (ADAPTER), the connector client, URLs and limits, typed wire
# messages, the checked parser, the fast path, the session, symbol naming.
ADAPTER_FILES = {
    "__init__.py",
    "client.py",
    "constants.py",
    "hot.py",
    "messages.py",
    "parse.py",
    "session.py",
    "symbols.py",
}
# A venue's own protocol rule, named by what it is.
VENUE_EXTRAS = {"okx": {"checksum.py"}}


def _room_map() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Where things live") :]
    table = section[: section.index("\n\n", section.index("| folder |"))]
    return set(re.findall(r"^\| `([^`]+)/` \|", table, flags=re.MULTILINE))


def _tracked_top_level_folders() -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return {path.split("/")[0] for path in listed if "/" in path and not path.startswith(".")}


def test_the_readme_room_map_lists_exactly_the_top_level_folders() -> None:
    assert _room_map() == _tracked_top_level_folders()


def test_every_venue_adapter_has_the_same_file_set() -> None:
    venues_dir = REPO / "svc_connector" / "venues"
    folders = sorted(p for p in venues_dir.iterdir() if (p / "__init__.py").is_file())
    assert [p.name for p in folders] == sorted(KNOWN_VENUES)
    for folder in folders:
        files = {p.name for p in folder.glob("*.py")}
        assert files == ADAPTER_FILES | VENUE_EXTRAS.get(folder.name, set()), folder.name


def test_every_configurable_venue_has_an_adapter() -> None:
    # The supervisor starts a connector per configured venue without asking the registry.
    assert sorted(KNOWN_VENUES) == sorted(registry.names())
