#!/usr/bin/env bash
# The project's test command: install what is missing, then run the whole suite.
# Usage: bash tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/install-deps.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
