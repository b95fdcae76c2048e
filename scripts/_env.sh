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
fi
# What the calling script needs in .venv, set before sourcing: KTEXPORT_SYNC=dev (the default: the
# `dev` dependency group, every tool the tests, lint and docs use) or demo (the package and the `demo`
# group only; --inexact, so it removes nothing a `dev` sync installed). --locked: exactly what uv.lock
# says (fails if pyproject.toml and the lock disagree). A parent script that synced `dev` already
# (exported KTEXPORT_SYNCED) covers both.
want="${KTEXPORT_SYNC:-dev}"
if [ "${KTEXPORT_SYNCED:-}" != dev ] && [ "${KTEXPORT_SYNCED:-}" != "$want" ]; then
  case "$want" in
    dev) sync_args=(--locked) ;;
    demo) sync_args=(--locked --inexact --no-default-groups --group demo) ;;
    *) echo "KTEXPORT_SYNC must be dev or demo, not '$want'" >&2; exit 1 ;;
  esac
  # Quiet when .venv already matches; otherwise say what is happening and let uv report its progress
  # (a first run downloads Airflow and its dependencies: a minute or more, not silence).
  if ! $KTEXPORT_UV sync --check --quiet "${sync_args[@]}" >/dev/null 2>&1; then
    echo "Installing the $want environment into $ROOT/.venv from uv.lock (the first run takes a minute or more) ..." >&2
    $KTEXPORT_UV sync "${sync_args[@]}" --compile-bytecode
  fi
  export KTEXPORT_SYNCED="$want"
fi
PY="$ROOT/.venv/bin/python"
export PATH="$ROOT/.venv/bin:$PATH"
