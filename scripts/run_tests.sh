#!/usr/bin/env bash
# Set up (or update) the project venv and run the whole test suite. Extra arguments go to pytest.
# This is the README's test command; .ci/run runs it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@"
