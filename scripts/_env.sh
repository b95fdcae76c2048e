# Sourced by the scripts: makes sure uv and the project's virtual environment exist and match uv.lock.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! python3 -m uv --version >/dev/null 2>&1; then
  python3 -m pip install --quiet uv
fi
# --locked: install exactly what uv.lock says (fails if pyproject.toml and the lock disagree).
python3 -m uv sync --quiet --locked --extra dev
PY="$ROOT/.venv/bin/python"
export PATH="$ROOT/.venv/bin:$PATH"
