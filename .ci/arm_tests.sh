#!/usr/bin/env bash
# Cross-builds pyslim's native core and GoogleTest suite for aarch64 and runs it under qemu-user twice:
# on an emulated CPU with the dotprod extension (QEMU_CPU=max: neon and neondot detected) and on one
# without it (QEMU_CPU=cortex-a72: neon only), so that both detection outcomes and every usable kernel
# table are exercised. Each run states the ISA set it expects through PYSLIM_EXPECT_ISAS.
#
# Usage: .ci/arm_tests.sh [build-dir]   (default: build-aarch64)
# Needs: g++-aarch64-linux-gnu, qemu-user, cmake >= 3.21, ninja, Debian's googletest sources.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"
build_dir="${1:-build-aarch64}"

cmake -S . -B "${build_dir}" -G Ninja \
  -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake \
  -DCMAKE_BUILD_TYPE=Release \
  -DPYSLIM_BUILD_PYTHON=OFF \
  -DPYSLIM_BUILD_TESTS=ON
cmake --build "${build_dir}" -j2

run_under() {
  local cpu="$1" expected="$2"
  echo "=== ctest under qemu-aarch64, QEMU_CPU=${cpu}, expecting ISAs ${expected} ==="
  QEMU_CPU="${cpu}" PYSLIM_EXPECT_ISAS="${expected}" \
    ctest --test-dir "${build_dir}" --output-on-failure
}

run_under max "reference,neon,neondot"
run_under cortex-a72 "reference,neon"
echo "aarch64 tests passed on both emulated CPUs"
