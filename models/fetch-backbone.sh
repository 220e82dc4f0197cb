#!/usr/bin/env bash
# Fetches the SSD MobileNetV1 face detector from the npm package @vladmandic/face-api (MIT),
# checks the tarball against its pinned sha512 integrity, converts the tfjs weights to
# safetensors with `patchctl convert` and checks the result against its pinned sha256.
#
#   models/fetch-backbone.sh [OUT]     (default: models/ssd_mobilenet_v1.safetensors)
#
# PATCHCTL names the patchctl binary (default: build/patchctl, then patchctl on PATH).
# Idempotent: when OUT exists with the pinned checksum it does nothing. On any failure it exits
# non-zero with a message and leaves no partial OUT behind (the file is renamed into place only
# once complete and checked).
set -euo pipefail

PACKAGE='@vladmandic/face-api'
VERSION='1.7.15'
INTEGRITY='sha512-WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw=='
# sha256 of the converted file: the conversion is deterministic, so any change in the package,
# the manifest or the converter shows up here.
MODEL_SHA256='fa5c84a90608365069c23f9fe4751d020e32084230f5b9a613ff923df0aa6e49'

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/ssd_mobilenet_v1.safetensors}
die() { echo "fetch-backbone: $*" >&2; exit 1; }

if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$MODEL_SHA256" ]; then
  echo "fetch-backbone: $out is up to date"
  exit 0
fi

patchctl=${PATCHCTL:-}
if [ -z "$patchctl" ]; then
  if [ -x "$here/../build/patchctl" ]; then patchctl=$here/../build/patchctl
  elif command -v patchctl >/dev/null; then patchctl=$(command -v patchctl)
  else die "patchctl not found: build first (meson setup build && ninja -C build) or set PATCHCTL"
  fi
fi
command -v npm >/dev/null || die "npm is not installed (Debian: apt-get install npm)"
command -v node >/dev/null || die "node is not installed (Debian: apt-get install nodejs)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-backbone: downloading $PACKAGE@$VERSION"
(cd "$tmp" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null 2>"$tmp/npm.log") ||
  die "npm pack $PACKAGE@$VERSION failed: $(tail -n 3 "$tmp/npm.log")"
tgz=$(ls "$tmp"/*.tgz 2>/dev/null | head -n 1)
[ -n "$tgz" ] || die "npm pack produced no tarball"
got=$(node -e 'const c=require("crypto"),f=require("fs");
  process.stdout.write("sha512-"+c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$tgz")
[ "$got" = "$INTEGRITY" ] || die "integrity mismatch for $PACKAGE@$VERSION: got $got, want $INTEGRITY"

tar -xzf "$tgz" -C "$tmp" package/model/ssd_mobilenetv1_model.bin \
  package/model/ssd_mobilenetv1_model-weights_manifest.json ||
  die "the tarball lacks the ssd_mobilenetv1 model files"
"$patchctl" convert --tfjs "$tmp/package/model/ssd_mobilenetv1_model-weights_manifest.json" \
  --source "$PACKAGE@$VERSION" --out "$tmp/model.safetensors" || die "conversion failed"
sum=$(sha256sum "$tmp/model.safetensors" | cut -d' ' -f1)
[ "$sum" = "$MODEL_SHA256" ] || die "converted model sha256 $sum, want $MODEL_SHA256"

# same directory as OUT, so the final rename is atomic
mkdir -p "$(dirname "$out")"
part=$(mktemp "$out.tmp.XXXXXX")
cp "$tmp/model.safetensors" "$part"
sync "$part" 2>/dev/null || true
mv -f "$part" "$out"
echo "fetch-backbone: wrote $out ($sum)"
