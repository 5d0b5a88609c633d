#!/usr/bin/env bash
# Install what the tests need on a fresh Debian/Ubuntu machine (run as root), into ./.venv.
# Real parts only: OpenSSH's sshd for the SSH tests, GlusterFS for the brick tests, rsync and attr
# for comparisons. Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
packages=(openssh-server openssh-client rsync attr glusterfs-server diffutils gcc libc6-dev libxxhash-dev)
# the accelerator in native/ is compiled against this interpreter's headers
python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
    || packages+=(python3-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p /run/sshd
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'
# native/ is built by the install above, only where xxhash.h is (libxxhash-dev): without it the
# pure-Python twins do everything and the side-by-side tests would skip, so it is required here
.venv/bin/python -c 'import georep._native as n; n.write_small, n.read_small_frame' \
    || { echo "setup-machine: georep._native was not built whole (see pip's output)" >&2; exit 1; }
