#!/usr/bin/env bash
# The whole test suite: install what is missing, build, lint, run pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
"$PY" -m ruff check python tests benchmarks scripts
"$PY" -m ruff format --check --quiet python tests benchmarks scripts
status=0
"$PY" -m pytest "$@" || status=$?
if ((status == 5)); then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
