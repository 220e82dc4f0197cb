#!/usr/bin/env bash
# valgrind memcheck over the core and patch unit tests, one at a time (not part of the test
# command: about 45 minutes in all, most of it core/train). Exit status 1 if any has an error or
# a leak. PD_UNDER_VALGRIND makes core/grad and core/train smaller. The committed face photo only
# for parity (each shared photo adds about four minutes);
# the forward-pass thread pool test is skipped (valgrind runs one thread at a time: ThreadSanitizer
# covers it in the test command).
#   tests/valgrind.sh [TEST...]      (default: core_st core_tfjs core_image core_ops patches_patch
#                                     core_parity core_grad core_train)
set -uo pipefail
cd "$(dirname "$0")/.."
export PD_MODEL=$PWD/models/ssd_mobilenet_v1.safetensors PD_TESTDATA=$PWD/tests/data
export PD_SHARED=/nonexistent OPENBLAS_NUM_THREADS=1 PD_UNDER_VALGRIND=1
tests=${*:-core_st core_tfjs core_image core_ops patches_patch core_parity core_grad core_train}
rc=0
for t in $tests; do
  s=$(date +%s)
  if valgrind --leak-check=full --show-leak-kinds=definite,indirect,possible \
      --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=9 \
      "build/tests/test_$t" > "build/valgrind_$t.log" 2>&1; then
    echo "valgrind $t: ok ($(( $(date +%s) - s )) s)"
  else
    echo "valgrind $t: FAILED, see build/valgrind_$t.log"
    rc=1
  fi
done
exit $rc
