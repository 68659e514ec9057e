#!/bin/sh
# Sequential direct-I/O write speed of the disk holding DIR: the baseline the
# object benchmark (cargo bench --bench objects) is compared against.
# Usage: contrib/dd-baseline.sh DIR [MiB]
set -eu
dir=${1:?usage: $0 DIR [MiB]}
mib=${2:-1024}
f="$dir/dd-baseline.$$"
trap 'rm -f "$f"' EXIT
dd if=/dev/zero of="$f" bs=4M count=$((mib / 4)) oflag=direct conv=fdatasync 2>&1 | tail -n 1
