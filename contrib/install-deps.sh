#!/usr/bin/env bash
# Installs the Debian packages the test suite uses: fuse3 (fusermount3), attr
# (setfattr/getfattr), e2fsprogs (mkfs.ext4, e2fsck), fio, util-linux (losetup,
# fstrim, blkdiscard). Does nothing when they are all present.
set -euo pipefail
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v setfattr >/dev/null || need+=(attr)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v fio >/dev/null || need+=(fio)
command -v losetup >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install: ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
