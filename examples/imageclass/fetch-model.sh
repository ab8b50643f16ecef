#!/usr/bin/env bash
# Copyright 2026 The UPM Authors
# SPDX-License-Identifier: Apache-2.0
#
# fetch-model.sh fetches the pretrained face models and sample photos that the
# imageclass function uses, from the npm package @vladmandic/face-api (MIT),
# into build/model at the root of the repository (or $UPM_MODEL_DIR).
#
# The package ships TensorFlow.js weights (a weights manifest in JSON and one
# binary shard a model, uint8-quantized float32) and six sample photos. The
# tarball is pinned by version and sha256; nothing is committed.
#
# It is idempotent: a second run checks the files and does nothing else.
set -euo pipefail

PKG=@vladmandic/face-api
VERSION=1.7.15
SHA256=0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031
TARBALL=vladmandic-face-api-${VERSION}.tgz

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=${UPM_MODEL_DIR:-$ROOT/build/model}
CACHE=$ROOT/build/npm

# The models the imageclass classifier runs, and the photos its tests use.
MODELS=(tiny_face_detector_model face_expression_model age_gender_model face_landmark_68_model face_recognition_model)
IMAGES=(sample1.jpg sample2.jpg sample3.jpg sample4.jpg sample5.jpg sample6.jpg)

say() { printf 'fetch-model: %s\n' "$*"; }

check_sha() {
	echo "$SHA256  $1" | sha256sum --check --status
}

if [[ -f $DEST/.source ]] && [[ $(cat "$DEST/.source") == "$PKG@$VERSION $SHA256" ]]; then
	missing=0
	for m in "${MODELS[@]}"; do
		[[ -f $DEST/$m-weights_manifest.json && -f $DEST/$m.bin ]] || missing=1
	done
	for i in "${IMAGES[@]}"; do [[ -f $DEST/$i ]] || missing=1; done
	if [[ $missing == 0 ]]; then
		say "$DEST already holds $PKG@$VERSION: nothing to do"
		exit 0
	fi
fi

mkdir -p "$CACHE" "$DEST"
if [[ -f $CACHE/$TARBALL ]] && check_sha "$CACHE/$TARBALL"; then
	say "using $CACHE/$TARBALL (sha256 ok)"
else
	command -v npm >/dev/null || { say "npm is needed (apt-get install npm)"; exit 1; }
	say "npm pack $PKG@$VERSION into $CACHE"
	rm -f "$CACHE/$TARBALL"
	(cd "$CACHE" && npm pack --silent "$PKG@$VERSION" >/dev/null)
	if ! check_sha "$CACHE/$TARBALL"; then
		say "sha256 of $CACHE/$TARBALL is $(sha256sum "$CACHE/$TARBALL" | cut -d' ' -f1), want $SHA256"
		exit 1
	fi
	say "sha256 ok: $SHA256"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
members=()
for m in "${MODELS[@]}"; do
	members+=("package/model/$m-weights_manifest.json" "package/model/$m.bin")
done
for i in "${IMAGES[@]}"; do members+=("package/demo/$i"); done
members+=(package/LICENSE)
tar -xzf "$CACHE/$TARBALL" -C "$tmp" "${members[@]}"
for f in "$tmp"/package/model/* "$tmp"/package/demo/*; do
	install -m 0644 "$f" "$DEST/"
done
install -m 0644 "$tmp/package/LICENSE" "$DEST/LICENSE.face-api"
echo "$PKG@$VERSION $SHA256" >"$DEST/.source"
say "extracted ${#MODELS[@]} models and ${#IMAGES[@]} photos into $DEST:"
(cd "$DEST" && du -ch -- *.bin *.jpg | tail -1 | sed 's/^/fetch-model:   /')
