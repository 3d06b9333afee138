#!/usr/bin/env bash
# Download, on a networked machine, what the GPU machine needs to build DeepGEMM: the pinned
# `deepinfer-gemm` sdist (a repackaging of DeepGEMM's full source) and the elfutils headers
# its JIT includes (Debian's libdw-dev / libelf-dev). Into .carry/deepgemm/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.carry/deepgemm
VERSION=2.8.2
SHA256=aad050965750f809b8dbb744a8db54fc4eba0eb3bc99d565fa9b41010fe25351
mkdir -p "$DEST"
sdist="$DEST/deepinfer_gemm-$VERSION.tar.gz"
if ! echo "$SHA256  $sdist" | sha256sum -c --status 2>/dev/null; then
    url=$(curl -fsSL "https://pypi.org/simple/deepinfer-gemm/" |
          grep -o "https://[^\"#]*deepinfer_gemm-$VERSION.tar.gz" | head -1)
    curl -fsSL -o "$sdist" "$url"
    echo "$SHA256  $sdist" | sha256sum -c
fi
if [ ! -f "$DEST/include/elfutils/libdwfl.h" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -q libdw-dev libelf-dev >/dev/null)
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
    mkdir -p "$DEST/include"
    cp -r "$tmp/x/usr/include/." "$DEST/include/"
    rm -rf "$tmp"
fi
du -sh "$DEST"
