#!/usr/bin/env bash
# Forward-pass speed at batch 1 against the PyTorch peer (tests/bench/torch_infer.py: the same
# network and weights, torch.jit.freeze + optimize_for_inference), side by side in one run:
# classification at 224 and faces at 512, with 1 and 2 threads. patchd splits each layer across
# its own threads. Both programs get the same committed photo (patchd's pointwise layers skip the
# channels ReLU6 zeroed, so its time depends a little on the input); for classification patchd is
# also timed on the fixed synthetic pattern, for comparison.
#
# This machine's speed drifts by 10-20% from one minute to the next, so the two programs run back
# to back ROUNDS times (which goes first alternates) and each round gives a ratio of the two
# medians of ITERS timed runs; the line reports the median over rounds of each program's time and
# of the per-round ratio. One line per figure; not part of the tests.
#   tests/bench/forward.sh [ITERS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
iters=${1:-30}
rounds=${2:-9}
py=/usr/bin/python3
med() { sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { $py -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
photo_classify=tests/data/flowers2/val/daisy/10172636503_21bededa75_n.jpg
photo_faces=tests/data/faces/sample1.jpg
for task in classify faces; do
  photo=$photo_classify
  [ $task = faces ] && photo=$photo_faces
  n=$iters
  [ $task = faces ] && n=$(( iters / 3 > 10 ? iters / 3 : 10 ))
  for t in 1 2; do
    ours=() peer=() ratio=() pattern=()
    for r in $(seq "$rounds"); do
      o="" p=""
      for turn in 1 2; do
        if [ $(( (r + turn) % 2 )) = 0 ]; then
          o=$(build/patchctl bench --task $task --threads $t --iters $n --image $photo |
            field ms_median)
        else
          p=$($py tests/bench/torch_infer.py --task $task --threads $t --iters $n \
            --image $photo | field ms_median)
        fi
      done
      ours+=("$o") peer+=("$p") ratio+=("$(echo "$o / $p" | bc -l)")
      if [ $task = classify ]; then
        pattern+=("$(build/patchctl bench --task $task --threads $t --iters $n | field ms_median)")
      fi
    done
    extra=""
    if [ $task = classify ]; then
      extra=$(printf '; patchd on the synthetic pattern %.2f ms' \
        "$(printf '%s\n' "${pattern[@]}" | med)")
    fi
    size=224
    [ $task = faces ] && size=512
    printf '%s %dx%d batch 1, %d thread(s): patchd %.2f ms, pytorch %.2f ms, ratio %.2f (per-round ratios %s to %s over %d rounds)%s\n' \
      $task $size $size $t "$(printf '%s\n' "${ours[@]}" | med)" \
      "$(printf '%s\n' "${peer[@]}" | med)" "$(printf '%s\n' "${ratio[@]}" | med)" \
      "$(printf '%.2f\n' "${ratio[@]}" | sort -g | head -1)" \
      "$(printf '%.2f\n' "${ratio[@]}" | sort -g | tail -1)" "$rounds" "$extra"
  done
done
