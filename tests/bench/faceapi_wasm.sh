#!/usr/bin/env bash
# face-api's own runtime for the faces graph, for reference next to patchd and PyTorch: installs
# @vladmandic/face-api@1.7.15 with @tensorflow/tfjs and tfjs-backend-wasm 4.22.0 (the versions it
# was built with) from npm into a temporary directory and times the SSD at 512x512, batch 1.
#   tests/bench/faceapi_wasm.sh [ITERS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
iters=${1:-10}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent @vladmandic/face-api@1.7.15 >/dev/null
tar xzf vladmandic-face-api-1.7.15.tgz
npm install --silent --no-audit --no-fund --ignore-scripts \
  @tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0 >/dev/null
NODE_PATH="$tmp/node_modules" node "$here/faceapi_wasm.js" "$tmp/package" 1 "$iters"
