#!/usr/bin/env bash
# Forward-pass speed, batch 1: faces at 512 and classification at 224, with 1 and 2 threads.
# One line per figure (medians of N runs after warm-up). Not part of the test suite.
#   tests/bench/forward.sh [ITERS]
set -euo pipefail
cd "$(dirname "$0")/../.."
iters=${1:-30}
for task in faces classify; do
  for t in 1 2; do
    OPENBLAS_NUM_THREADS=$t build/patchctl bench --task $task --threads $t --iters "$iters" |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print("%s %dx%d batch 1 threads %d: %.2f ms median, %.2f ms p90" % (d["task"], d["size"], d["size"], d["threads"], d["ms_median"], d["ms_p90"]))'
  done
done
