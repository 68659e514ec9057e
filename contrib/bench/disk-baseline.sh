#!/bin/sh
# Sequential 4 MiB O_DIRECT write throughput of the disk holding DIR: the
# ceiling the store's large-write path is measured against. The second line,
# with dsync, makes every 4 MiB write durable before the next (one flush per
# write), the ceiling for a store that acknowledges each write as durable at
# queue depth 1; the store's own direct path needs two (data, journal).
# Usage: contrib/bench/disk-baseline.sh DIR
set -eu
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    echo "usage: $0 DIR (an existing directory on the disk to measure)" >&2
    exit 2
fi
f="$1/ddtest.$$"
trap 'rm -f "$f"' EXIT INT TERM
for flags in direct direct,dsync; do
    out=$(dd if=/dev/zero of="$f" bs=4M count=256 oflag=$flags 2>&1)
    rm -f "$f"
    # dd's summary: "N bytes (...) copied, S s, R MB/s"; recompute from N
    # and S so the unit is always MB/s (10^6 bytes).
    echo "$out" | awk -v flags="$flags" '/copied/ {
        bytes = $1
        for (i = 1; i <= NF; i++) if ($i == "s," || $i == "s") secs = $(i - 1)
        sub(",", ".", secs)
        printf "dd 4MiB oflag=%s: %.1f MB/s\n", flags, bytes / secs / 1e6
    }'
done
