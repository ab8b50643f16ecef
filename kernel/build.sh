#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# build.sh FLAVOUR - build a bootable UPM guest kernel from Debian's
# linux-source-6.12, at the version the series is based on (kernel/BASE;
# kernel/source.sh finds or fetches it).
#
#   FLAVOUR  plain  base.config + upm.config            (default)
#            debug  plain + debug.config (lockdep, DEBUG_VM, KASAN, ...)
#            profile  plain + profile.config (the function profiler)
#            stock  base.config only, no UPM patches     (for comparisons)
#
# Everything lands in build/ (ignored by git):
#   build/linux-<version>/      the extracted, patched source (never built in)
#   build/kernel-<flavour>/     the O= output; arch/x86/boot/bzImage is the result
#
# The source is extracted once; the patch series in kernel/patches/ (new
# files included) is applied in order and re-applied only when it changes,
# keeping the timestamps of files whose content ends up the same, so make
# rebuilds only what changed. Builds use ccache when it is installed. To
# change the series, see kernel/series.sh.
set -euo pipefail

flavour=${1:-plain}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
build=${UPM_BUILD_DIR:-$repo/build}
jobs=${UPM_JOBS:-$(nproc)}

log() { printf '[kernel %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$flavour" in
plain) fragments=(base.config upm.config) patched=1 ;;
debug) fragments=(base.config upm.config debug.config) patched=1 ;;
profile) fragments=(base.config upm.config profile.config) patched=1 ;;
stock) fragments=(base.config) patched=0 ;;
*) die "unknown flavour '$flavour' (plain, debug, profile or stock)" ;;
esac

# Tools and the kernel source come from Debian's archive.
need_pkgs=()
command -v gcc >/dev/null || need_pkgs+=(gcc)
command -v make >/dev/null || need_pkgs+=(make)
command -v flex >/dev/null || need_pkgs+=(flex)
command -v bison >/dev/null || need_pkgs+=(bison)
command -v bc >/dev/null || need_pkgs+=(bc)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v patch >/dev/null || need_pkgs+=(patch)
[ -e /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)
[ -e /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing ${need_pkgs[*]}: install them with apt-get (needs root)"
	log "installing ${need_pkgs[*]} from apt"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

version=$(tr -d '[:space:]' <"$here/BASE")
tarball=$("$here/source.sh")
src=$build/linux-source-6.12
mkdir -p "$build"

# The stamp records which Debian package the tree came from; a new package
# version means a fresh extraction.
extract() {
	log "extracting linux-source-6.12 $version (about 20 s)"
	rm -rf "$src" "$build"/applied-patches
	tar -C "$build" -xf "$tarball"
	echo "$version" >"$src/.upm-debian-version"
	mkdir -p "$build/applied-patches"
}
if [ ! -f "$src/.upm-debian-version" ] || [ "$(cat "$src/.upm-debian-version")" != "$version" ]; then
	extract
fi

# Patches: undo the series that is applied if it differs from kernel/patches,
# then apply the new one. Stock builds need a pristine tree, so they get
# their own copy of the source.
want_series() { if [ "$patched" = 1 ]; then ls "$here"/patches/*.patch 2>/dev/null || true; fi; }
if [ "$patched" = 0 ]; then
	stock_src=$build/linux-source-6.12-stock
	if [ ! -d "$stock_src" ] || [ "$(cat "$stock_src/.upm-debian-version" 2>/dev/null)" != "$version" ]; then
		log "extracting a pristine copy of $version for the stock kernel"
		rm -rf "$stock_src" "$build/stock-tmp"
		mkdir -p "$build/stock-tmp"
		tar -C "$build/stock-tmp" -xf "$tarball"
		mv "$build/stock-tmp/linux-source-6.12" "$stock_src"
		rmdir "$build/stock-tmp"
		echo "$version" >"$stock_src/.upm-debian-version"
	fi
	src=$stock_src
else
	applied=$build/applied-patches
	mkdir -p "$applied"
	same=1
	want=$(want_series | xargs -r -n1 basename | sort)
	have=$(ls "$applied" 2>/dev/null | sort)
	if [ "$want" != "$have" ]; then
		same=0
	else
		for p in $want; do
			cmp -s "$here/patches/$p" "$applied/$p" || same=0
		done
	fi
	if [ "$same" = 0 ]; then
		# Files whose content ends up as it was keep their timestamps, so
		# changing one patch does not rebuild everything that includes a
		# file another patch touches (the uapi header, say).
		keep=$build/patch-mtimes
		rm -rf "$keep" && mkdir -p "$keep"
		touched=$(cat $(ls "$applied"/*.patch 2>/dev/null) $(want_series) </dev/null | sed -n 's|^+++ b/||p' | sort -u)
		for f in $touched; do
			[ -f "$src/$f" ] && mkdir -p "$keep/$(dirname "$f")" && cp -p "$src/$f" "$keep/$f"
		done
		for p in $(ls "$applied" | sort -r); do
			log "reverting $p"
			if ! patch -d "$src" -p1 -R -s -F0 --dry-run <"$applied/$p" >/dev/null; then
				# Someone edited the tree by hand: start again from the tarball.
				log "$p does not revert cleanly: the tree was changed by hand"
				extract
				break
			fi
			patch -d "$src" -p1 -R -s -F0 --no-backup-if-mismatch <"$applied/$p" >/dev/null
			rm "$applied/$p"
		done
		# Files the series creates that are there anyway (copied in by
		# an older build.sh) would make their patch fail.
		for f in $(want_series | xargs -r awk '/^--- \/dev\/null$/ { getline; sub(/^\+\+\+ b\//, ""); print }'); do
			rm -f "$src/$f"
		done
		for p in $want; do
			log "applying $p"
			# A dry run first: a patch that fails half-way would leave the
			# tree in a state no record describes.
			patch -d "$src" -p1 -s -F0 --dry-run <"$here/patches/$p" >/dev/null ||
				die "$p does not apply to linux-source-6.12 $version (kernel/BASE): see kernel/series.sh"
			patch -d "$src" -p1 -s -F0 --no-backup-if-mismatch <"$here/patches/$p" >/dev/null
			cp "$here/patches/$p" "$applied/$p"
		done
		for f in $touched; do
			if [ -f "$keep/$f" ] && cmp -s "$keep/$f" "$src/$f"; then
				touch -r "$keep/$f" "$src/$f"
			fi
		done
		rm -rf "$keep"
	fi
fi

out=$build/kernel-$flavour
mkdir -p "$out"
cc=gcc
# ccache pays off for rebuilds on a developer's machine; a CI run starts
# cold, where it only adds a preprocessor pass to every file.
if [ -z "${CI:-}" ] && command -v ccache >/dev/null; then cc="ccache gcc"; fi

# The kselftest-style C programs (upm_*.c), static so that they run in the
# bare guest; the VM rig puts every one of them into the guest's /bin.
if [ "$patched" = 1 ]; then
	mkdir -p "$build/selftests"
	# The series' own: the tree may hold other upm_*.c files left by hand.
	for ours in $(want_series | xargs -r sed -n 's|^+++ b/\(tools/testing/selftests/mm/upm_[a-z_]*\.c\)$|\1|p' | sort -u); do
		selftest=$src/$ours
		bin=$build/selftests/$(basename "$selftest" .c)
		if [ ! -x "$bin" ] || [ "$selftest" -nt "$bin" ]; then
			log "building $(basename "$bin")"
			gcc -O2 -Wall -Werror -static -o "$bin" "$selftest" ||
				die "$(basename "$selftest") does not build"
		fi
	done
fi

# Configuration: tinyconfig plus our fragments, regenerated only when a
# fragment changed. Every option a fragment asks for must survive
# olddefconfig; a silently dropped option (KASAN without !SLUB_TINY, say)
# would make the run test something else than it claims.
frag_paths=()
for f in "${fragments[@]}"; do frag_paths+=("$here/config/$f"); done
cfg_hash=$(cat "${frag_paths[@]}" | sha256sum | cut -c1-16)
if [ ! -f "$out/.config" ] || [ "$(cat "$out/.upm-config-hash" 2>/dev/null)" != "$cfg_hash" ]; then
	log "configuring $flavour: tinyconfig + ${fragments[*]}"
	make -C "$src" O="$out" CC="$cc" -s tinyconfig >/dev/null
	(cd "$out" && "$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "${frag_paths[@]}" >/dev/null)
	make -C "$src" O="$out" CC="$cc" -s olddefconfig >/dev/null
	missing=0
	while read -r line; do
		case "$line" in
		CONFIG_*=*) grep -qx "$line" "$out/.config" || { log "option lost in olddefconfig: $line"; missing=1; } ;;
		"# CONFIG_"*" is not set") grep -qx "$line" "$out/.config" || { log "option lost in olddefconfig: $line"; missing=1; } ;;
		esac
	done < <(cat "${frag_paths[@]}")
	[ "$missing" = 0 ] || die "the configuration does not have every option the fragments ask for"
	echo "$cfg_hash" >"$out/.upm-config-hash"
fi

log "building $flavour bzImage from linux-source-6.12 $version with $jobs jobs"
start=$(date +%s)
make -C "$src" O="$out" CC="$cc" -j"$jobs" -s bzImage >&2 || die "kernel build failed"
log "built $out/arch/x86/boot/bzImage in $(($(date +%s) - start)) s (Debian linux-source-6.12 $version, $(make -C "$src" O="$out" -s kernelrelease 2>/dev/null))"
echo "$out/arch/x86/boot/bzImage"
