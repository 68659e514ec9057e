#!/usr/bin/env bash
# Crash soak: ext4 on a loop device over an image file, a writer that
# fsyncs each file it writes and only then logs its name (on another file
# system), and `kill -9` of the daemon at a random moment; then a remount,
# `e2fsck -fn`, and every logged file checked byte for byte. Repeats
# ROUNDS times on the same store. Needs root, fuse3, e2fsprogs, util-linux,
# and a build (`cargo build --release`).
#
#   contrib/soak/kill9.sh [--rounds N] [--dir DIR] [--bin PATH]
#
# Exit 0 when every round passed; the first failure stops the run and
# leaves DIR for inspection.
set -euo pipefail

rounds=10
dir=""
bin="$(dirname "$0")/../../target/release/rbdfs"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--dir DIR] [--bin PATH]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "kill9.sh: needs root" >&2; exit 1; }
[ -x "$bin" ] || { echo "kill9.sh: no $bin; run cargo build --release" >&2; exit 1; }
[ -n "$dir" ] || dir="$(mktemp -d /var/tmp/rbdfs-kill9.XXXXXX)"
store="$dir/store" mnt="$dir/mnt" fs="$dir/fs" log="$dir/written"
mkdir -p "$mnt" "$fs"
: > "$log"
daemon="" dev=""

# Mounted, even when dead (a FUSE mount whose daemon was killed fails stat).
mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

teardown() {
  if mounted "$fs"; then umount "$fs" 2>/dev/null || umount -l "$fs"; fi
  if [ -n "$dev" ]; then losetup -d "$dev" 2>/dev/null || true; fi
  dev=""
  if mounted "$mnt"; then fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt"; fi
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
  daemon=""
}
trap teardown EXIT

start() {
  "$bin" --store "$store" mount "$mnt" >>"$dir/daemon.log" 2>&1 &
  daemon=$!
  for _ in $(seq 200); do mounted "$mnt" && [ -d "$mnt/rbd" ] && return; sleep 0.05; done
  echo "kill9.sh: the mount did not come up; see $dir/daemon.log" >&2
  exit 1
}

# What file $1 holds (`yes` ends on SIGPIPE, which is not a failure here).
content() { { yes "file $1" || :; } | head -c $((16384 + ($1 % 7) * 4096)); }

start
truncate -s 256M "$mnt/rbd/vm"
dev=$(losetup -f --show "$mnt/rbd/vm")
mkfs.ext4 -q "$dev"
losetup -d "$dev"; dev=""
n=0
for round in $(seq "$rounds"); do
  dev=$(losetup -f --show "$mnt/rbd/vm")
  mount "$dev" "$fs"
  (
    i=$n
    while :; do
      content "$i" > "$fs/f.$i"
      sync "$fs/f.$i"          # fsync: from here on it must survive
      echo "$i" >> "$log"; sync "$log"
      i=$((i + 1))
    done
  ) 2>/dev/null &
  writer=$!
  sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.5 + (r % 250) / 100 }')"
  kill -9 "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=""
  kill "$writer" 2>/dev/null || true; wait "$writer" 2>/dev/null || true
  teardown
  start
  dev=$(losetup -f --show "$mnt/rbd/vm")
  mount "$dev" "$fs"             # replays ext4's journal
  count=0
  while read -r i; do
    if ! content "$i" | cmp -s - "$fs/f.$i"; then
      echo "round $round: f.$i was fsynced but reads differently" >&2
      exit 1
    fi
    count=$((count + 1))
    n=$((i + 1))
  done < "$log"
  umount "$fs"
  if ! e2fsck -fn "$dev" >"$dir/fsck.log" 2>&1; then
    echo "round $round: e2fsck found errors; see $dir/fsck.log" >&2
    exit 1
  fi
  losetup -d "$dev"; dev=""
  echo "round $round: $count fsynced files intact, e2fsck clean"
done
teardown
trap - EXIT
rm -rf "$dir"
echo "kill9.sh: $rounds rounds passed"
