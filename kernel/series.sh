#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# series.sh - work on the UPM patch series (kernel/patches) as git commits.
#
#   series.sh tree [DIR]    make DIR (default build/series) a git tree of
#                           Debian's pristine linux-source-6.12 at the
#                           series' base (kernel/BASE), tagged
#                           "pristine", with kernel/patches applied by git am:
#                           one commit a patch, new files included
#   series.sh export [DIR]  write DIR's commits since "pristine" back into
#                           kernel/patches with git format-patch
#   series.sh check [DIR]   checkpatch --strict each patch of kernel/patches
#
# Change a patch by committing a fixup in the tree and squashing it in:
#
#   cd build/series && $EDITOR mm/upm.c
#   git commit -a --fixup=<the patch's commit>   # git add -f new files:
#   git rebase -i --autosquash pristine          # the tree's .gitignore
#   cd - && kernel/series.sh export              # ignores everything
#
# kernel/build.sh then builds what kernel/patches holds, and nothing else.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cmd=${1:-}
dir=${2:-$repo/build/series}
author=(-c "user.name=UPM developers" -c "user.email=upm-dev@upm-project.org")

die() { echo "series.sh: $*" >&2; exit 1; }

case "$cmd" in
tree)
	[ ! -e "$dir" ] || die "$dir exists: remove it first, or work in it"
	tarball=$("$here/source.sh")
	mkdir -p "$dir.tmp"
	tar -C "$dir.tmp" -xf "$tarball"
	mv "$dir.tmp/linux-source-6.12" "$dir"
	rmdir "$dir.tmp"
	cd "$dir"
	git init -q
	# The tarball's .gitignore ends in /*: add what it ignores, too.
	git add -f -A .
	git "${author[@]}" commit -q -m "pristine linux-source-6.12 $(cat "$here/BASE")"
	git tag pristine
	git config core.abbrev 7
	git "${author[@]}" am -q "$here"/patches/*.patch
	git log --oneline pristine..
	;;
export)
	[ -d "$dir/.git" ] || die "no git tree in $dir: series.sh tree first"
	out=$(mktemp -d)
	git -C "$dir" -c core.abbrev=7 format-patch -q -o "$out" pristine
	rm -f "$here"/patches/*.patch
	mv "$out"/*.patch "$here/patches/"
	rmdir "$out"
	ls "$here/patches"
	;;
check)
	[ -d "$dir/.git" ] || die "no git tree in $dir: series.sh tree first"
	# checkpatch's SPDX check runs scripts/spdxcheck.py, which needs
	# Debian's python3-ply and python3-git: Debian's python3 first, not
	# whatever python3 comes first in PATH (pyenv, say).
	export PATH=/usr/bin:$PATH
	if ! python3 -c 'import ply, git' 2>/dev/null; then
		[ "$(id -u)" = 0 ] || die "checkpatch needs python3-ply and python3-git: apt-get install them (as root)"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-ply python3-git >/dev/null
	fi
	for p in "$here"/patches/*.patch; do
		"$dir/scripts/checkpatch.pl" --strict --quiet "$p" || echo "^ $(basename "$p")"
	done
	;;
*)
	sed -n '4,22p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
