#!/usr/bin/env bash
# The two commands of the README's quick start.
#
#   deploy/quickstart.sh run    set up (packages, build, backbone) if needed, then serve on
#                               127.0.0.1:8080 (extra arguments go to patchd)
#   deploy/quickstart.sh test   set up if needed, then run the test suite twice: in the normal
#                               build (build/) and in an ASan+UBSan build (build-asan/); then the
#                               concurrency tests in a ThreadSanitizer build (build-tsan/) and
#                               the fuzz targets' corpora (clang, libFuzzer; build-fuzz/)
#
# Both are idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

setup() {
  bash deploy/deps.sh
  [ -f build/build.ninja ] || meson setup build
  ninja -C build
  PATCHCTL=build/patchctl bash models/fetch-backbone.sh
}

summary() {
  # one closing line over every test run: "N passed, N failed"
  python3 - "$@" <<'PY'
import json, sys
passed = failed = 0
for log in sys.argv[1:]:
    for line in open(log):
        r = json.loads(line)
        if r.get("result") in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r.get("result") != "SKIP":
            failed += 1
print(f"tests: {passed} passed, {failed} failed")
PY
}

case "${1:-}" in
run)
  shift
  setup
  exec build/patchd --listen 127.0.0.1:8080 "$@"
  ;;
test)
  setup
  [ -f build-asan/build.ninja ] || meson setup build-asan -Db_sanitize=address,undefined \
    -Dbuildtype=debugoptimized -Db_lundef=false
  ninja -C build-asan
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  rc=0
  meson test -C build --suite unit --suite e2e --print-errorlogs || rc=1
  meson test -C build-asan --suite unit --suite e2e --print-errorlogs || rc=1
  # the concurrency tests under ThreadSanitizer (OpenBLAS is not instrumented: one thread)
  [ -f build-tsan/build.ninja ] || meson setup build-tsan -Db_sanitize=thread \
    -Dbuildtype=debugoptimized -Db_lundef=false
  ninja -C build-tsan tests/test_patches_store tests/test_core_ops
  OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1 \
    meson test -C build-tsan --print-errorlogs --no-rebuild patches/store core/ops || rc=1
  # the fuzz targets (clang, libFuzzer, ASan+UBSan) replay their committed corpora
  [ -f build-fuzz/build.ninja ] || CC=clang meson setup build-fuzz -Dfuzz=true \
    -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debugoptimized
  ninja -C build-fuzz
  meson test -C build-fuzz --suite fuzz --print-errorlogs --no-rebuild || rc=1
  summary build/meson-logs/testlog.json build-asan/meson-logs/testlog.json \
    build-tsan/meson-logs/testlog.json build-fuzz/meson-logs/testlog.json
  exit $rc
  ;;
*)
  echo "usage: deploy/quickstart.sh run|test" >&2
  exit 2
  ;;
esac
