#!/usr/bin/env bash
# Build fastrnn's C++ extension with AddressSanitizer and UndefinedBehaviorSanitizer
# (-fsanitize=address,undefined) into its own virtual environment and build directory,
# then run the test suite against it. Any invalid memory access or undefined behaviour in
# the kernels aborts the run with a report, and the script fails.
#
#   tools/sanitize.sh                      # build (incrementally) and run tests/
#   tools/sanitize.sh tests/test_robustness.py -x   # other pytest arguments
#
# Needs GCC or Clang with their sanitizer runtimes (libasan, libubsan) and PyPI for the
# first run; the venv and the build directory (build/sanitize/) are reused afterwards.
# Python itself is not instrumented, so libasan is preloaded, and leak detection is off
# (the interpreter keeps memory until exit by design).
set -euo pipefail
cd "$(dirname "$0")/.."

root="build/sanitize"
venv="$root/venv"
python="${PYTHON:-python3}"
cxx="${CXX:-c++}"
start=$SECONDS

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
# the build requirements of pyproject.toml, installed once: rebuilds then need no download
"$venv/bin/python" -m pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.13" \
    "cmeel-eigen>=3.4,<3.5"

flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
echo "== building the extension with $flags"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$venv/bin/python" -m pip install --quiet --no-build-isolation \
    -C build-dir="$root/build" \
    -C cmake.build-type=RelWithDebInfo \
    -C "cmake.define.CMAKE_CXX_FLAGS=$flags" \
    -C "cmake.define.CMAKE_MODULE_LINKER_FLAGS=-fsanitize=address,undefined" \
    -C "cmake.define.CMAKE_SHARED_LINKER_FLAGS=-fsanitize=address,undefined" \
    ".[test]"
built=$SECONDS

# (found, not imported: an instrumented module may only load with libasan preloaded)
core=$("$venv/bin/python" -c \
    "import importlib.util as u; print(u.find_spec('fastrnn._core').origin)")
if ! ldd "$core" | grep -q libasan; then
    echo "error: $core is not linked against libasan: the sanitizer flags did not apply" >&2
    exit 1
fi

# The peak-memory test is left out: it measures a subprocess's resident memory against a
# bound (under ASan that memory includes the sanitizer's own), in a clean environment
# without LD_PRELOAD, where an instrumented module refuses to load. The normal suite runs it.
# libasan must come first; libstdc++ too, or ASan cannot intercept C++ exceptions thrown
# from the extension (Python itself does not link libstdc++)
preload="$("$cxx" -print-file-name=libasan.so) $("$cxx" -print-file-name=libstdc++.so)"
logs="$root/reports"
rm -rf "$logs" && mkdir -p "$logs"
echo "== running the tests with LD_PRELOAD=$preload"
status=0
LD_PRELOAD="$preload" \
ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:halt_on_error=1:log_path=$logs/asan" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${@:-tests}" \
    --deselect "tests/test_checkpoint.py::test_peak_memory_of_a_long_checkpointed_run" \
    || status=$?
# pytest captures stderr, so a report is written to a file: show every one, and fail
for report in "$logs"/*; do
    [ -e "$report" ] || continue
    echo "== sanitizer report $report:" && head -n 80 "$report"
    status=1
done

echo "== sanitizer run: exit $status; build $((built - start)) s, tests $((SECONDS - built)) s"
exit $status
