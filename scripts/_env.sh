# Sourced by the scripts: makes sure uv and the project's virtual environment exist and match uv.lock.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${KTEXPORT_UV:-}" ]; then
  # The machine's own python3 (not a virtual environment's, which has no pip) bootstraps uv.
  boot=""
  for candidate in $(type -ap python3); do
    case "$candidate" in "$ROOT"/.venv*) continue ;; esac
    boot="$candidate"
    break
  done
  [ -n "$boot" ] || { echo "python3 (3.11+) is needed" >&2; exit 1; }
  if ! "$boot" -m uv --version >/dev/null 2>&1; then
    "$boot" -m pip install --quiet uv
  fi
  export KTEXPORT_UV="$boot -m uv"
  # --locked: install exactly what uv.lock says (fails if pyproject.toml and the lock disagree).
  $KTEXPORT_UV sync --quiet --locked --extra dev
fi
PY="$ROOT/.venv/bin/python"
export PATH="$ROOT/.venv/bin:$PATH"
