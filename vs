#!/usr/bin/env bash
# volstream bootstrap: creates .venv with everything the project needs, then runs a command.
#   ./vs up [--sim] [flags]   run the whole system (live venues; --sim: offline simulator)
#   ./vs test [pytest args]   lint, type-check, contract checks and the full test suite
#   ./vs bench [name]         benchmarks (bench/), printing tables
#   ./vs <anything else>      runs `volstream <args>` inside the venv
set -euo pipefail
cd "$(dirname "$0")"

pick_python() {
  for py in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)'; then
      echo "$py"; return 0
    fi
  done
  echo "volstream needs Python 3.11-3.13 (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

ensure_venv() {
  local stamp=.venv/.volstream-installed
  if [ ! -x .venv/bin/python ]; then
    "$(pick_python)" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "vs: installing volstream and its dependencies into .venv ..." >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
  fi
}

cmd="${1:-}"
[ -n "$cmd" ] && shift
ensure_venv
case "$cmd" in
  test) exec bash scripts/test "$@" ;;
  bench) exec .venv/bin/python -m bench "$@" ;;
  "") exec .venv/bin/volstream --help ;;
  *) exec .venv/bin/volstream "$cmd" "$@" ;;
esac
