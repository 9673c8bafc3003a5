#!/usr/bin/env bash
# Compile check for aarch64 (Linux arm64, the architecture of the manylinux aarch64 wheels):
# configures the project with Debian's cross compiler as the C++ compiler (CMake itself
# runs as on the build machine, so it finds this Python; CMakeLists.txt asks the compiler
# what it targets) and builds every extension module,
# without optimisation (a check that the sources and CMakeLists.txt are portable, not a
# usable build). CMakeLists.txt must choose the generic kernel level only there.
#
# Needs g++-aarch64-linux-gnu (Debian/Ubuntu; installed with apt-get when missing and
# running as root) and the build requirements (scikit-build-core's: pybind11, cmeel-eigen,
# cmake, ninja) in the active Python environment.
# Usage: tools/cross_check_aarch64.sh [BUILD_DIR]   (default: build/cross-aarch64)
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build/cross-aarch64}"

if ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu >/dev/null
  else
    echo "cross_check_aarch64: no aarch64-linux-gnu-g++ (apt-get install g++-aarch64-linux-gnu)" >&2
    exit 1
  fi
fi

rm -rf "$build"
cmake -S . -B "$build" -G Ninja \
  -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O0 \
  -DSKBUILD_PROJECT_NAME=fastrnn -DSKBUILD_PROJECT_VERSION=0.0.0 \
  -DPython_EXECUTABLE="$(command -v python)" \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" >"$build.log"
grep "fastrnn: kernel levels" "$build.log"
cmake --build "$build" -j 2 >>"$build.log"

# Exactly the generic kernels and _core, both aarch64 objects.
modules=$(cd "$build" && ls -- *.so)
expected=$'_core\n_kernels_generic'
got=$(printf '%s\n' "$modules" | sed 's/\..*//' | sort)
if [ "$got" != "$expected" ]; then
  echo "cross_check_aarch64: built modules '$got', expected '$expected'" >&2
  exit 1
fi
for so in $modules; do
  file -b "$build/$so" | grep -q "ARM aarch64" || {
    echo "cross_check_aarch64: $so is not an aarch64 object: $(file -b "$build/$so")" >&2
    exit 1
  }
done
echo "cross_check_aarch64: OK ($(printf '%s ' $modules)built for aarch64)"
