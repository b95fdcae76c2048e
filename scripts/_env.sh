# Sourced by the scripts: makes sure uv and the project's virtual environment exist and match uv.lock.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${KTEXPORT_UV:-}" ]; then
  # Find uv without touching the system's Python: a uv on PATH, the machine python3's own uv module,
  # or one we installed before into a private tools venv; else make that venv now. System pip is
  # never used: a stock Debian/Ubuntu python3 refuses it (PEP 668, externally-managed-environment).
  boot=""
  for candidate in $(type -ap python3); do
    case "$candidate" in "$ROOT"/.venv*|"$ROOT"/.tools/*) continue ;; esac
    boot="$candidate"
    break
  done
  [ -n "$boot" ] || { echo "python3 (3.11+) is needed" >&2; exit 1; }
  tools="$ROOT/.tools/venv"
  if [ -x "$tools/bin/uv" ]; then
    KTEXPORT_UV="$tools/bin/uv"
  elif command -v uv >/dev/null 2>&1; then
    KTEXPORT_UV="$(command -v uv)"
  elif "$boot" -m uv --version >/dev/null 2>&1; then
    KTEXPORT_UV="$boot -m uv"
  else
    echo "Installing uv into a private virtual environment ($tools) ..." >&2
    if ! "$boot" -m venv "$tools" >/dev/null 2>&1; then
      rm -rf "$tools"
      echo "python3 -m venv failed: on Debian/Ubuntu install the venv module (apt-get install python3-venv)" >&2
      exit 1
    fi
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check uv
    KTEXPORT_UV="$tools/bin/uv"
  fi
  export KTEXPORT_UV
  # --locked: install exactly what uv.lock says (fails if pyproject.toml and the lock disagree).
  $KTEXPORT_UV sync --quiet --locked --extra dev --compile-bytecode
fi
PY="$ROOT/.venv/bin/python"
export PATH="$ROOT/.venv/bin:$PATH"
