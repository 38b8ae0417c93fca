#!/usr/bin/env bash
# The Docker image's runtime stage installs `install-deps.sh runtime` and nothing else,
# so that group must hold the package of every shared library the binaries name in
# DT_NEEDED (their own dependencies follow through apt). Fails naming what is missing.
# Usage: runtime_packages_test.sh INSTALL_DEPS BINARY...
set -euo pipefail
install_deps="$1"
shift
mapfile -t runtime < <(bash "$install_deps" --list runtime)
declare -A listed=()
for p in "${runtime[@]}"; do listed[$p]=1; done

missing=0
checked=0
for bin in "$@"; do
  while read -r lib; do
    path="$(ldd "$bin" | awk -v n="$lib" '$1 == n { print $3 }')"
    if [ -z "$path" ] || [ "$path" = "not" ]; then
      echo "FAIL: $bin needs $lib, which does not resolve here"
      missing=1
      continue
    fi
    owner="$(dpkg -S "$path" 2> /dev/null || dpkg -S "$(readlink -f "$path")" 2> /dev/null || true)"
    pkg="${owner%%:*}"
    if [ -z "$pkg" ]; then
      echo "FAIL: $bin needs $path, which no Debian package owns"
      missing=1
    elif [ "$pkg" != "libc6" ] && [ -z "${listed[$pkg]:-}" ]; then  # libc6 is Essential
      echo "FAIL: $(basename "$bin") needs $lib from $pkg, not in install-deps.sh's runtime group"
      missing=1
    fi
    checked=$((checked + 1))
  done < <(objdump -p "$bin" | awk '/NEEDED/ { print $2 }')
done
[ "$checked" -gt 0 ] || { echo "FAIL: no libraries read from $*"; exit 1; }
for p in libopenblas0-openmp dataset-fashion-mnist; do
  [ -n "${listed[$p]:-}" ] || { echo "FAIL: runtime group lacks $p"; missing=1; }
done
[ "$missing" -eq 0 ] && echo "runtime group covers the $checked libraries the binaries need"
exit "$missing"
