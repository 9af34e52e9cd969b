# Cross toolchain for aarch64 Linux (Debian's g++-aarch64-linux-gnu), with qemu-user as the emulator so
# that ctest runs the native tests of the target on an x86-64 host:
#   cmake -S . -B build-aarch64 -G Ninja -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
# QEMU_CPU in the environment picks the emulated CPU (max: dotprod present; cortex-a72: plain NEON).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(PYSLIM_AARCH64_SYSROOT "/usr/aarch64-linux-gnu" CACHE PATH "Target root with the aarch64 libc and libstdc++")

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# -L points qemu's dynamic loader at the target libraries instead of the host's.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L ${PYSLIM_AARCH64_SYSROOT})

# Look for libraries, headers and CMake packages only under the target root, never on the host; programs
# (tools that run during the build) come from the host.
set(CMAKE_FIND_ROOT_PATH ${PYSLIM_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
