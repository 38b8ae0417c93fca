#!/usr/bin/env bash
# Builds and runs the Dockerfile's image without a Docker engine, to check its steps on a
# machine that has none (this project's CI machines). Each `FROM debian:bookworm` becomes
# a fresh debootstrap chroot; COPY and RUN are carried out in it as Docker would (RUN
# through /bin/sh -c); the final stage then runs as the image would: ENTRYPOINT + CMD as
# the image's USER, the HEALTHCHECK command until it passes, a short search submitted with
# the image's own `qsearch` client, and a SIGTERM stop.
#
# Usage (root, network to Debian's archive): bash deploy/check-image.sh [WORK_DIR]
# Takes 20-40 minutes on 2 cores, most of it apt and compiling; WORK_DIR (default
# /var/tmp/qsearch-image-check) keeps a debootstrap base between runs.
# Understands the instructions this Dockerfile uses and stops at any other.
set -euo pipefail
cd "$(dirname "$0")/.."
src="$(pwd)"
work="$(realpath -m "${1:-/var/tmp/qsearch-image-check}")"
[ "$(id -u)" -eq 0 ] || { echo "check-image: run as root (debootstrap, chroot)"; exit 1; }
command -v debootstrap > /dev/null || { echo "check-image: apt-get install debootstrap"; exit 1; }
mkdir -p "$work"
log() { echo "check-image: $*"; }

base="$work/base"
if [ ! -x "$base/bin/bash" ]; then
  log "debootstrap bookworm (minbase) into $base"
  rm -rf "$base"
  debootstrap --variant=minbase bookworm "$base" http://deb.debian.org/debian > "$work/debootstrap.log"
fi

mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2> /dev/null || true; done
  [ -n "${server_pid:-}" ] && kill -KILL "$server_pid" 2> /dev/null || true
}
trap cleanup EXIT

declare -A stage_root=()
root=""
user="root"
entrypoint=()
cmd=()
healthcheck=()
stage_index=0

new_stage() {  # FROM debian:bookworm [AS name]
  local image="$1" name="${3:-$stage_index}"
  [ "$image" = "debian:bookworm" ] || { log "only debian:bookworm stages are supported, not $image"; exit 1; }
  root="$work/stage-$name"
  log "stage $name: fresh root $root"
  # A run killed before its cleanup leaves mounts behind: never delete through them.
  for m in proc dev sys; do umount -l "$root/$m" 2> /dev/null || true; done
  rm -rf --one-file-system "$root"
  cp -a "$base" "$root"
  # The debian:bookworm image's sources: main, updates and security.
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/" 2> /dev/null || true
  rm -f "$root/etc/apt/sources.list"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
  mount --bind /dev "$root/dev" && mounted+=("$root/dev")
  mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
  stage_root[$name]="$root"
  stage_index=$((stage_index + 1))
  user="root"
}

json_array() {  # ["a", "b"] -> one item per line
  python3 -c 'import json,sys; print("\n".join(json.loads(sys.argv[1])))' "$1"
}

copy() {  # COPY [--from=stage] SRC... DEST
  local from="" args=("$@")
  if [[ "${args[0]}" == --from=* ]]; then
    from="${stage_root[${args[0]#--from=}]}"
    args=("${args[@]:1}")
  fi
  local dest="${args[-1]}" sources=("${args[@]:0:${#args[@]}-1}")
  for s in "${sources[@]}"; do
    if [ -n "$from" ]; then
      mkdir -p "$root/$dest"
      cp -a "$from/$s/." "$root/$dest/"
    elif [ "$s" = "." ]; then
      # The build context: what git tracks or would track (.gitignore and .dockerignore
      # both leave out build trees and outputs).
      mkdir -p "$root/$dest"
      (cd "$src" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$root/$dest")
    else
      mkdir -p "$(dirname "$root/$dest")"
      cp "$src/$s" "$root/$dest"
    fi
  done
}

# Instructions, continuation lines joined, comments dropped.
mapfile -t instructions < <(sed -e '/^[[:space:]]*#/d' Dockerfile | sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | sed '/^[[:space:]]*$/d')
for line in "${instructions[@]}"; do
  keyword="${line%% *}"
  rest="${line#* }"
  case "$keyword" in
    FROM) new_stage $rest ;;
    COPY) copy $rest ;;
    RUN)
      log "RUN ${rest:0:100}"
      chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        /bin/sh -c "$rest" > "$work/run-$stage_index.log" 2>&1 || { tail -30 "$work/run-$stage_index.log"; exit 1; }
      ;;
    USER) user="$rest" ;;
    VOLUME) while read -r v; do mkdir -p "$root/$v"; done < <(json_array "$rest") ;;
    EXPOSE) exposed="$rest" ;;
    ENTRYPOINT) mapfile -t entrypoint < <(json_array "$rest") ;;
    CMD) mapfile -t cmd < <(json_array "$rest") ;;
    HEALTHCHECK) mapfile -t healthcheck < <(json_array "${rest#*CMD }") ;;
    *) log "unsupported instruction $keyword"; exit 1 ;;
  esac
done

log "image built: $(du -sh --exclude=proc --exclude=dev "$root" | cut -f1) (runtime root, uncompressed)"
# The secret a deployment mounts: the tokens file the entrypoint names.
tokens_file="$(printf '%s\n' "${entrypoint[@]}" | grep -A1 -- --auth-tokens | tail -1)"
token="check-image-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$root$(dirname "$tokens_file")"
printf '%s check-image\n' "$token" > "$root$tokens_file"
chown "${user%%:*}" "$root$tokens_file"
log "run as $user: ${entrypoint[*]} ${cmd[*]} (port ${exposed:-?}, tokens at $tokens_file)"
chroot --userspec="$user" "$root" "${entrypoint[@]}" "${cmd[@]}" > "$work/server.log" 2>&1 &
server_pid=$!
in_image() { chroot --userspec="$user" "$root" /usr/bin/env HOME=/tmp "$@"; }
healthy=0
for _ in $(seq 1 60); do
  if in_image "${healthcheck[@]}" > /dev/null 2>&1; then healthy=1; break; fi
  kill -0 "$server_pid" 2> /dev/null || { cat "$work/server.log"; exit 1; }
  sleep 1
done
[ "$healthy" -eq 1 ] || { log "HEALTHCHECK never passed"; cat "$work/server.log"; exit 1; }
log "HEALTHCHECK passes: ${healthcheck[*]}"
server="$(printf '%s\n' "${healthcheck[@]}" | grep -A1 -- --server | tail -1)"
log "submitting a short Fashion-MNIST search with the image's client"
in_image qsearch --server "$server" --token "$token" submit --model lenet5 --train-size 4000 --val-size 500 --test-size 2000 \
  --epochs 1,1,1,1 --avg-bits 3 --act-bits 4 --watch | tail -3
kill -TERM "$server_pid"
wait "$server_pid" && status=0 || status=$?
server_pid=""
[ "$status" -eq 0 ] || { log "the server exited $status after SIGTERM"; exit 1; }
log "the server stopped cleanly on SIGTERM; the image's steps work"
