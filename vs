#!/usr/bin/env bash
# volstream bootstrap: creates .venv from requirements.lock, then runs a command.
#   ./vs up [--sim] [flags]   run the whole system (live venues; --sim: offline simulator)
#   ./vs test [pytest args]   lint, type-check, contract checks and the full test suite
#   ./vs bench [name]         benchmarks (bench/), printing tables
#   ./vs lock [--upgrade]     refresh requirements.lock from pyproject.toml
#   ./vs <anything else>      runs `volstream <args>` inside the venv
# Works from any current directory and from a checkout whose path has spaces.
set -euo pipefail
cd "$(dirname "$0")"

SUPPORTED="3.11, 3.12 or 3.13"

supported() {
  "$1" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)' 2>/dev/null
}

pick_python() {
  local py
  if [ -n "${PYTHON:-}" ]; then
    # An explicit choice is checked, never silently replaced by another interpreter.
    if command -v "$PYTHON" >/dev/null 2>&1 && supported "$PYTHON"; then
      echo "$PYTHON"; return 0
    fi
    echo "vs: PYTHON=$PYTHON is not Python $SUPPORTED ($("$PYTHON" --version 2>&1 || echo 'not found'))" >&2
    return 2
  fi
  for py in python3.11 python3.12 python3.13 python3; do
    if command -v "$py" >/dev/null 2>&1 && supported "$py"; then
      echo "$py"; return 0
    fi
  done
  echo "vs: volstream needs Python $SUPPORTED; found $(python3 --version 2>&1 || echo 'no python3')." >&2
  echo "vs: install one, or point PYTHON=/path/to/python3.11 at it." >&2
  return 2
}

# The install is keyed by the lock's and pyproject's content (not mtimes: a clone sets them all).
lock_key() { cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1; }

ensure_venv() {
  local stamp=.venv/.volstream-installed py
  if [ -x .venv/bin/python ] && ! supported .venv/bin/python; then
    echo "vs: .venv was made with an unsupported Python; remove it (rm -rf .venv) and rerun" >&2
    exit 2
  fi
  if [ ! -x .venv/bin/python ]; then
    py=$(pick_python) || exit 2
    "$py" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(lock_key)" ]; then
    echo "vs: installing volstream and its locked dependencies into .venv ..." >&2
    # Exactly the locked versions, each checked against its hash; then the project itself,
    # built with the locked setuptools (no isolated build that would fetch an unlocked one).
    .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
      --no-deps -r requirements.lock
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
      --no-build-isolation -e .
    lock_key > "$stamp"
  fi
}

cmd="${1:-}"
[ -n "$cmd" ] && shift
ensure_venv
case "$cmd" in
  test) exec bash scripts/test "$@" ;;
  bench) exec .venv/bin/python -m bench "$@" ;;
  lock) exec bash scripts/lock "$@" ;;
  "") exec .venv/bin/volstream --help ;;
  *) exec .venv/bin/volstream "$cmd" "$@" ;;
esac
