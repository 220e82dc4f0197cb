#!/usr/bin/env bash
# Training speed, patchd against PyTorch (Debian's python3-torch) in the same run: one epoch of
# each kind on the same images with the same recipe (batch 32, input 224, crop+flip, 2 threads).
# Prints one line per kind: seconds for the images, the time per flowers5 epoch (1985 images)
# it implies, and the ratio patchd/PyTorch.
#   tests/bench/train_vs_torch.sh [DATA_DIR] [IMAGES] [KINDS]
#   (defaults ../shared/datasets/flowers5/train, 640, "logits sb sbdw")
# patchd's logits time is everything it does for that kind (features once, then the probe);
# sb/sbdw time the fine-tuning epoch alone (train_seconds), PyTorch times its training loop.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/datasets/flowers5/train}
n=${2:-640}
kinds=${3:-logits sb sbdw}
py=/usr/bin/python3
$py -c 'import torch, PIL' 2>/dev/null || { echo "needs python3-torch and python3-pil (apt-get install python3-torch)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# the same N images for both: the first N of a seeded shuffle, linked into class folders
$py - "$data" "$n" "$tmp/sub" <<'PY'
import os, random, sys
root, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
items = [(c, f) for c in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, c))
         for f in sorted(os.listdir(os.path.join(root, c)))]
random.Random(1).shuffle(items)
for c, f in items[:n]:
    os.makedirs(os.path.join(out, c), exist_ok=True)
    os.symlink(os.path.abspath(os.path.join(root, c, f)), os.path.join(out, c, f))
PY
for kind in $kinds; do
  ours=$(OPENBLAS_NUM_THREADS=1 build/patchctl train --data "$tmp/sub" --kind $kind --epochs 1 \
         --threads 2 --out "$tmp/p.safetensors" 2>/dev/null)
  peer=$($py tests/bench/torch_peer.py train --data "$tmp/sub" --kind $kind --threads 2 2>/dev/null)
  $py - "$kind" "$n" "$ours" "$peer" <<'PY'
import json, sys
kind, n = sys.argv[1], int(sys.argv[2])
o, p = json.loads(sys.argv[3]), json.loads(sys.argv[4])
ours = o["seconds"] if kind == "logits" else o["train_seconds"]
peer = p["seconds"]
print(f"train {kind}: {n} images: patchd {ours:.1f} s, pytorch {peer:.1f} s; per flowers5 epoch "
      f"(1985): patchd {ours * 1985 / n:.0f} s, pytorch {peer * 1985 / n:.0f} s; "
      f"ratio {ours / peer:.2f}")
PY
done
