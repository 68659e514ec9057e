#!/bin/sh
# Sequential 4 MiB O_DIRECT write throughput of the disk holding DIR: the
# ceiling the store's large-write path is measured against.
# Usage: contrib/bench/disk-baseline.sh DIR
set -eu
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 DIR (an existing directory on the disk to measure)" >&2
    exit 2
fi
f="$1/ddtest.$$"
trap 'rm -f "$f"' EXIT INT TERM
out=$(dd if=/dev/zero of="$f" bs=4M count=256 oflag=direct 2>&1)
# dd's summary: "N bytes (...) copied, S s, R MB/s"; recompute from N and S
# so the unit is always MB/s (10^6 bytes).
echo "$out" | awk '/copied/ {
    bytes = $1
    for (i = 1; i <= NF; i++) if ($i == "s," || $i == "s") secs = $(i - 1)
    sub(",", ".", secs)
    printf "dd 4MiB oflag=direct: %.1f MB/s\n", bytes / secs / 1e6
}'
