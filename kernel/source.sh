#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# source.sh - print the path of the linux-source-6.12 tarball the series in
# kernel/patches is based on: the Debian package version in kernel/BASE.
#
# Debian's security archive moves linux-source-6.12 to each new stable
# release, and a patch that applied to one can fail on the next. So the
# series names its base, and every build uses exactly that source: the
# installed package when it is that version, else the package of that
# version fetched with apt-get download into build/debian (the system's
# packages stay as they are). When the archive no longer has the version,
# the series must be rebased: kernel/series.sh tree, then update kernel/BASE.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
build=${UPM_BUILD_DIR:-$repo/build}
base=$(tr -d '[:space:]' <"$here/BASE")
pkg=linux-source-6.12

log() { printf '[kernel %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# dpkg-query fails for a package that was never installed (a fresh
# machine): that is "nothing installed", not an error.
installed=$({ dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true; } |
	sed -n 's/^install ok installed //p')
if [ "$installed" = "$base" ] && [ -e /usr/src/linux-source-6.12.tar.xz ]; then
	echo /usr/src/linux-source-6.12.tar.xz
	exit 0
fi

cache=$build/debian/$base
tarball=$cache/usr/src/linux-source-6.12.tar.xz
if [ ! -e "$tarball" ]; then
	command -v apt-get >/dev/null || die "no apt-get: get Debian's $pkg $base and put its tarball at $tarball"
	if ! apt-cache show "$pkg=$base" >/dev/null 2>&1; then
		[ "$(id -u)" = 0 ] || die "apt does not know $pkg $base: run apt-get update (as root)"
		log "updating apt's package lists to find $pkg $base"
		apt-get update -qq
	fi
	apt-cache show "$pkg=$base" >/dev/null 2>&1 ||
		die "Debian's archive no longer has $pkg $base (the series' base, kernel/BASE): rebase kernel/patches onto ${installed:-the current version} (kernel/series.sh) and update kernel/BASE"
	log "fetching $pkg $base (${installed:+installed: $installed; }the series' base)"
	rm -rf "$cache.tmp" && mkdir -p "$cache.tmp"
	(cd "$cache.tmp" && apt-get download -qq "$pkg=$base" >/dev/null 2>&1) ||
		(cd "$cache.tmp" && apt-get download "$pkg=$base") ||
		die "apt-get download $pkg=$base failed"
	dpkg-deb -x "$cache.tmp"/"${pkg}"_*.deb "$cache.tmp/root"
	[ -e "$cache.tmp/root/usr/src/linux-source-6.12.tar.xz" ] || die "the $pkg $base package has no linux-source-6.12.tar.xz"
	rm -rf "$cache" && mkdir -p "$(dirname "$cache")"
	mv "$cache.tmp/root" "$cache"
	rm -rf "$cache.tmp"
fi
echo "$tarball"
