#!/usr/bin/env bash
# The whole test suite: install what is missing, build, lint, run pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
"$PY" -m ruff check python tests benchmarks scripts
"$PY" -m ruff format --check --quiet python tests benchmarks scripts

# The C++ tests (tests_cpp/): every kernel and op against scalar references
# on every SIMD target this machine runs, then again under ASan and UBSan.
# Both trees build incrementally.
# - build/ctest links the liblowbit_core.a that setup.sh built for the module
#   (scikit-build's tree for this Python): the library the module holds, and
#   no second compile of every target's kernels (minutes on 2 cores).
# - build/ctest-asan compiles the kernels sanitized, at -O0 without -g (with
#   ASan, -O1 took 9 minutes to compile quantize.cc for one target here, -O0
#   20 s; reports name functions without debug info), and for one target
#   only, to keep the step near a minute: this machine's best (-march=native,
#   HWY_COMPILE_ONLY_STATIC), whose wide vectors read furthest past a row's
#   end if a loop bound is wrong.
ctest_tree() {
  local dir=$1
  shift
  local generator=()
  # A new tree uses Ninja when present (requirements/build.txt): it compiles
  # the tests alongside the kernels.
  if [[ ! -f $dir/CMakeCache.txt ]] && command -v ninja >/dev/null; then
    generator=(-G Ninja)
  fi
  cmake -S . -B "$dir" "${generator[@]}" -DLOWBIT_BUILD_TESTS=ON -DLOWBIT_BUILD_MODULE=OFF \
    "$@" >/dev/null
  cmake --build "$dir" -j2 --target lowbit_tests
  ctest --test-dir "$dir" --output-on-failure
}
soabi=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('SOABI'))")
core_cache=$(grep -l "^SKBUILD_SOABI:STRING=$soabi\$" build/*/CMakeCache.txt 2>/dev/null |
  head -n 1 || true)
ctest_tree build/ctest -DCMAKE_BUILD_TYPE=Release \
  -DLOWBIT_CORE_LIBRARY="${core_cache:+$(dirname "$core_cache")/liblowbit_core.a}"
ctest_tree build/ctest-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O0 \
  -DCMAKE_CXX_FLAGS="-march=native -DHWY_COMPILE_ONLY_STATIC" -DLOWBIT_SANITIZE=ON

status=0
"$PY" -m pytest "$@" || status=$?
if ((status == 5)); then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
