#!/usr/bin/env bash
# The main job end to end: install what is missing, build, run `lowbit demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m lowbit demo "$@"
