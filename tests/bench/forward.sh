#!/usr/bin/env bash
# Forward-pass speed at batch 1 against the PyTorch peer (tests/bench/torch_infer.py: the same
# network and weights, torch.jit.freeze + optimize_for_inference), side by side in one run:
# classification at 224 and faces at 512, with 1 and 2 threads. patchd splits each layer across
# its own threads (--split layers); the OpenBLAS-threads variant (--split blas) is shown too.
# Each figure is the median of ITERS timed runs after warm-up; the two programs alternate ROUNDS
# times and the line gives the median over rounds. One line per figure; not part of the tests.
#   tests/bench/forward.sh [ITERS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
iters=${1:-30}
rounds=${2:-3}
py=/usr/bin/python3
med() { sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { $py -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
for task in classify faces; do
  n=$iters
  [ $task = faces ] && n=$(( iters / 3 > 10 ? iters / 3 : 10 ))
  for t in 1 2; do
    ours=() blas=() peer=()
    for r in $(seq "$rounds"); do
      ours+=("$(build/patchctl bench --task $task --threads $t --iters $n | field ms_median)")
      [ $t -gt 1 ] && blas+=("$(build/patchctl bench --task $task --threads $t --split blas \
        --iters $n | field ms_median)")
      peer+=("$($py tests/bench/torch_infer.py --task $task --threads $t --iters $n |
        field ms_median)")
    done
    o=$(printf '%s\n' "${ours[@]}" | med)
    p=$(printf '%s\n' "${peer[@]}" | med)
    extra=""
    if [ $t -gt 1 ]; then
      b=$(printf '%s\n' "${blas[@]}" | med)
      extra=$(printf '; patchd with OpenBLAS threads instead %.2f ms' "$b")
    fi
    size=224
    [ $task = faces ] && size=512
    printf '%s %dx%d batch 1, %d thread(s): patchd %.2f ms, pytorch %.2f ms, ratio %.2f%s\n' \
      $task $size $size $t "$o" "$p" "$(echo "$o / $p" | bc -l)" "$extra"
  done
done
