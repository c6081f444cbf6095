"""The bootstrap (`./vs`) and the lock check, run as a newcomer would, in scratch copies."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

SUPPORTED = "3.11, 3.12 or 3.13"


def _fake_python(bin_dir: Path, name: str, version: str) -> Path:
    """An interpreter that reports ``version`` and fails the version check, as 3.10 would."""
    path = bin_dir / name
    path.write_text(
        f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python {version}"; exit 0; fi\nexit 1\n'
    )
    path.chmod(0o755)
    return path


def _scratch_checkout(tmp_path: Path) -> Path:
    """A directory with a space in its path holding what ./vs reads before it installs."""
    checkout = tmp_path / "my checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("vs", "requirements.lock", "pyproject.toml", "scripts/lock", "scripts/test"):
        shutil.copy2(REPO / name, checkout / name)
    return checkout


def _tools_only_path(tmp_path: Path) -> Path:
    """A PATH directory with the shell tools ./vs uses and no real Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "cat", "cksum", "cut"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    return bin_dir


def test_vs_names_the_versions_it_needs_when_only_an_old_python_exists(tmp_path: Path) -> None:
    checkout = _scratch_checkout(tmp_path)
    bin_dir = _tools_only_path(tmp_path)
    _fake_python(bin_dir, "python3", "3.10.13")
    # Run from another directory: ./vs finds its own checkout.
    result = subprocess.run(
        [str(bin_dir / "bash"), str(checkout / "vs"), "test"],
        cwd=tmp_path,
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert SUPPORTED in result.stderr
    assert "3.10.13" in result.stderr
    assert not (checkout / ".venv").exists()


def test_vs_refuses_an_explicit_unsupported_python(tmp_path: Path) -> None:
    checkout = _scratch_checkout(tmp_path)
    bin_dir = _tools_only_path(tmp_path)
    old = _fake_python(bin_dir, "python3.10", "3.10.13")
    result = subprocess.run(
        [str(bin_dir / "bash"), str(checkout / "vs"), "test"],
        cwd=checkout,
        env={"PATH": str(bin_dir), "PYTHON": str(old)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert f"PYTHON={old} is not Python {SUPPORTED}" in result.stderr


def test_lock_check_passes_on_the_repository_and_fails_on_a_changed_pyproject(
    tmp_path: Path,
) -> None:
    checkout = _scratch_checkout(tmp_path)
    (checkout / ".venv").symlink_to(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(checkout / "scripts" / "lock"), "--check"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    agreed = check()
    assert agreed.returncode == 0, agreed.stderr
    # A dependency removed from pyproject.toml but still in the lock: they disagree.
    pyproject = checkout / "pyproject.toml"
    text = pyproject.read_text()
    assert '  "orjson>=3.10,<4",\n' in text
    pyproject.write_text(text.replace('  "orjson>=3.10,<4",\n', ""))
    disagreed = check()
    assert disagreed.returncode == 1
    assert "requirements.lock does not match pyproject.toml: run ./vs lock" in disagreed.stderr
    assert "-orjson==" in disagreed.stdout
