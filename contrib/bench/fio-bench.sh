#!/usr/bin/env bash
# fio benchmark: rbdfs image behind a direct-I/O loop device versus a plain
# file behind a direct-I/O loop device on the same disk. Prints one table with
# both, the ratio, and the ratio the project's bar is set in (to 1/N of the
# plain file for writes with N replicas; marked ! below 0.6). Needs root,
# fio, losetup, fusermount3, and a built rbdfs (cargo build --release).
#
#   contrib/bench/fio-bench.sh [--size 1|3] [--runtime SECONDS] [--repeat N]
#                              [--image-size SIZE] [--dir DIR] [--rbdfs PATH]
#
#   --size        replicas of the store's pool (1 or 3; default 3)
#   --runtime     seconds per job (default 20)
#   --repeat      runs of each job on each side, alternating; the table shows
#                 the medians, and the rbdfs runs' lowest and highest (default 1)
#   --image-size  size of the images and the plain file (default 2G)
#   --dir         where the store and the plain file go (default /var/tmp)
#   --rbdfs       the binary (default target/release/rbdfs)
#
# Everything it creates (store, mount, loop devices, daemon) is removed on
# exit, also on failure or Ctrl-C.
set -euo pipefail

replicas=3
runtime=20
repeat=1
image_size=2G
base=/var/tmp
rbdfs=target/release/rbdfs

while [ $# -gt 0 ]; do
  case "$1" in
    --size) replicas="$2"; shift 2 ;;
    --runtime) runtime="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --image-size) image_size="$2"; shift 2 ;;
    --dir) base="$2"; shift 2 ;;
    --rbdfs) rbdfs="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "fio-bench: unknown argument $1 (see --help)" >&2; exit 22 ;;
  esac
done

die() { echo "fio-bench: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (FUSE mount, losetup)"
for t in fio losetup fusermount3 truncate; do
  command -v "$t" >/dev/null || die "needs $t (contrib/install-deps.sh)"
done
[ -x "$rbdfs" ] || die "no rbdfs binary at $rbdfs (cargo build --release, or --rbdfs PATH)"
case "$replicas" in 1|3) ;; *) die "--size must be 1 or 3" ;; esac
case "$repeat" in ''|*[!0-9]*|0) die "--repeat must be a whole number of runs, 1 or more" ;; esac
rbdfs=$(realpath "$rbdfs")

work=$(mktemp -d -p "$base" rbdfs-bench.XXXXXX)
store="$work/store"
mnt="$work/mnt"
loops=()

cleanup() {
  set +e
  for d in "${loops[@]}"; do losetup -d "$d" 2>/dev/null; done
  if mountpoint -q "$mnt" 2>/dev/null; then
    fusermount3 -u "$mnt"
    # The daemon flushes and closes the store after the unmount; wait for its lock.
    for _ in $(seq 600); do
      flock -n "$store/lock" true 2>/dev/null && break
      sleep 0.1
    done
  fi
  # Never recurse into a live mount: that would unlink the images.
  if mountpoint -q "$mnt" 2>/dev/null; then
    echo "fio-bench: $mnt is still mounted; left $work in place" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT INT TERM

attach() { # attach FILE [extra losetup args] -> sets $dev (no subshell: loops must persist)
  dev=$(losetup -f --show --direct-io=on "$@")
  loops+=("$dev")
}

# fio job on a device; prints "read_iops read_kib_s write_iops write_kib_s".
run_fio() { # run_fio DEV NAME fio-args...
  local dev="$1" name="$2"; shift 2
  fio --name="$name" --filename="$dev" --direct=1 --ioengine=libaio \
      --time_based --runtime="$runtime" --ramp_time=2 --group_reporting \
      --output-format=terse --terse-version=3 "$@" 2>/dev/null |
    awk -F';' '{ printf "%s %s %s %s\n", $8, $7, $49, $48 }'
}

prefill() { # write the whole device once, so reads hit data, not holes
  fio --name=prefill --filename="$1" --direct=1 --ioengine=libaio --rw=write \
      --bs=1M --iodepth=8 --output-format=terse >/dev/null 2>&1
}

echo "fio-bench: store in $work (replicas $replicas, ${runtime}s per job, images $image_size)" >&2
mkdir -p "$mnt"
"$rbdfs" --store "$store" init --replicas "$replicas"
"$rbdfs" --store "$store" mount "$mnt" --daemon

truncate -s "$image_size" "$mnt/rbd/bench"
truncate -s "$image_size" "$work/plain.img"
attach "$mnt/rbd/bench"; rdev=$dev
attach "$work/plain.img"; pdev=$dev
echo "fio-bench: prefilling $rdev (rbdfs) and $pdev (plain)" >&2
prefill "$rdev"
prefill "$pdev"

# Clone chains for the read-through-parents jobs: golden image, then clones of
# clones, 1 and 16 deep.
truncate -s "$image_size" "$mnt/rbd/golden"
attach "$mnt/rbd/golden"; gdev=$dev
prefill "$gdev"
losetup -d "$gdev"
unset 'loops[-1]'
parent=golden
for depth in $(seq 1 16); do
  setfattr -n user.rbd.snap -v s "$mnt/rbd/$parent"
  setfattr -n user.rbd.protected -v 1 "$mnt/rbd/$parent@s"
  setfattr -n user.rbd.clone -v "rbd/clone$depth" "$mnt/rbd/$parent@s"
  parent="clone$depth"
done
attach "$mnt/rbd/clone1" -r; c1dev=$dev
attach "$mnt/rbd/clone16" -r; c16dev=$dev

declare -a rows=()

# The job's figure from run_fio's output: MiB/s or IOPS, read, write or both.
figure() { # figure UNIT SIDE "read_iops read_kib write_iops write_kib"
  local riops rbw wiops wbw
  read -r riops rbw wiops wbw <<<"$3"
  case "$1:$2" in
    bw:read)    echo $((rbw / 1024)) ;;
    bw:write)   echo $((wbw / 1024)) ;;
    iops:read)  echo "$riops" ;;
    iops:write) echo "$wiops" ;;
    iops:both)  echo $((riops + wiops)) ;;
  esac
}

# Median, lowest and highest of whole numbers.
stats() { # stats N...
  printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)
    print m, v[1], v[NR] }'
}

measure() { # measure LABEL UNIT(iops|bw) SIDE(read|write|both) RBD_DEV PLAIN_DEV fio-args...
  local label="$1" unit="$2" side="$3" r="$4" p="$5"; shift 5
  echo "fio-bench: $label" >&2
  local i a=() b=()
  for ((i = 0; i < repeat; i++)); do
    # Each run starts with no dirty data left behind by the one before (the
    # store's write-back of earlier writes would otherwise land in the next
    # run's numbers).
    sync
    # The clone jobs read the golden image, which a run would leave in the
    # page cache for the next: each starts cold instead.
    if [ "${cold:-0}" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches; fi
    a+=("$(figure "$unit" "$side" "$(run_fio "$r" "$label" "$@")")")
    sync
    b+=("$(figure "$unit" "$side" "$(run_fio "$p" "$label" "$@")")")
  done
  rows+=("$label|$side|$unit|$(stats "${a[@]}")|$(stats "${b[@]}")")
}

measure "seq write 1M qd8"      bw   write "$rdev"  "$pdev" --rw=write --bs=1M --iodepth=8
measure "seq read 1M qd8"       bw   read  "$rdev"  "$pdev" --rw=read --bs=1M --iodepth=8
measure "rand write 4K qd32"    iops write "$rdev"  "$pdev" --rw=randwrite --bs=4k --iodepth=32
measure "rand read 4K qd32"     iops read  "$rdev"  "$pdev" --rw=randread --bs=4k --iodepth=32
measure "randrw 70/30 4K qd32"  iops both  "$rdev"  "$pdev" --rw=randrw --rwmixread=70 --bs=4k --iodepth=32
measure "rand write 4K fsync=1" iops write "$rdev"  "$pdev" --rw=randwrite --bs=4k --iodepth=1 --fsync=1 --ioengine=psync
cold=1
measure "clone 1-deep read 4K"  iops read  "$c1dev"  "$pdev" --rw=randread --bs=4k --iodepth=32
measure "clone 16-deep read 4K" iops read  "$c16dev" "$pdev" --rw=randread --bs=4k --iodepth=32
cold=0

# The bar: 0.6 of the plain file, of 1/N of it for writes with N replicas
# (each byte is written once per replica, all on the same disk).
printf '\n%-24s %14s %14s %7s %7s' "job (size=$replicas)" "rbdfs" "plain file" "ratio" "bar"
if [ "$repeat" -gt 1 ]; then printf '  %s' "rbdfs low-high ($repeat runs, medians shown)"; fi
printf '\n'
for row in "${rows[@]}"; do
  IFS='|' read -r label side unit a b <<<"$row"
  read -r x xlo xhi <<<"$a"
  read -r y _ _ <<<"$b"
  case "$unit" in bw) u="MiB/s" ;; *) u="IOPS" ;; esac
  ratio=$(awk -v x="$x" -v y="$y" 'BEGIN { if (y > 0) printf "%.2f", x / y; else print "-" }')
  share=1
  if [ "$side" != read ]; then share=$replicas; fi
  bar=$(awk -v x="$x" -v y="$y" -v n="$share" 'BEGIN {
    if (y <= 0) { print "-"; exit }
    r = x * n / y
    printf "%s%.2f", (r >= 0.6 ? "" : "!"), r }')
  printf '%-24s %8s %-5s %8s %-5s %7s %7s' "$label" "$x" "$u" "$y" "$u" "$ratio" "$bar"
  if [ "$repeat" -gt 1 ]; then printf '  %s-%s' "$xlo" "$xhi"; fi
  printf '\n'
done
echo "bar: rbdfs to the plain file, to 1/$replicas of it for writes and the mix; ! below 0.6"
