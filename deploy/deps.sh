#!/usr/bin/env bash
# Installs the Debian packages that patchd's build, tests and backbone fetch need.
# Idempotent: when every package is already installed it changes nothing and needs no root.
# Node.js/npm are needed only to fetch the backbone: an npm already on PATH is used as it is,
# and Debian's npm package is installed only when there is none.
set -euo pipefail

pkgs=(
  build-essential meson ninja-build pkg-config
  libmicrohttpd-dev libjansson-dev libopenblas-dev libuv1-dev libjpeg62-turbo-dev
  libarchive-dev libssl-dev libcmocka-dev clang libclang-rt-14-dev
  python3 python3-yaml systemd curl ca-certificates
)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all packages present"
  exit 0
fi

echo "deps: installing ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
