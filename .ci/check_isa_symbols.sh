#!/usr/bin/env bash
# Each ISA's object files are compiled with that ISA's flags. If one of them defined a weak symbol (an
# inline function or template instantiation from a shared header, e.g. std::vector<float>::...), the
# linker could keep that copy for the baseline code too, and the "portable" wheel would crash with SIGILL
# on an older CPU. So: every per-ISA object may define only its fill function(s), fill_<isa>_<op>(KernelTable*).
# Usage: .ci/check_isa_symbols.sh BUILD_DIR
set -euo pipefail
build="${1:?build dir}"
status=0
found=0
while IFS= read -r obj; do
  found=1
  defined=$(nm -C --defined-only --extern-only "$obj" | awk '{ $1=""; $2=""; sub(/^  /, ""); print }')
  extra=$(printf '%s\n' "$defined" | grep -v -E '^pyslim::fill_[a-z0-9_]+\(pyslim::KernelTable\*\)$' || true)
  if [ -n "$extra" ]; then
    echo "ISA object $obj defines symbols besides its fill function:" >&2
    printf '  %s\n' "$extra" >&2
    status=1
  fi
done < <(find "$build" -name '*.o' \( -path '*pyslim_avx*' -o -path '*pyslim_neon*' \))
[ "$found" = 1 ] || { echo "no per-ISA objects found under $build" >&2; exit 1; }
[ "$status" = 0 ] && echo "ISA objects export only their fill functions"
exit $status
