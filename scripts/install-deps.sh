#!/usr/bin/env bash
# Copyright 2026 The UPM Authors
# SPDX-License-Identifier: Apache-2.0
#
# install-deps.sh WHAT... - make sure the tools that make demo and make test
# need are on this machine, installing them from Debian's archive when run as
# root; otherwise name the packages and fail.
#
#   vm     qemu-system-x86_64 (the guest runs under QEMU, TCG)
#   model  npm (examples/imageclass/fetch-model.sh fetches the model from npm)
#
# kernel/build.sh installs the kernel's own build dependencies itself.
set -euo pipefail

say() { printf '[deps] %s\n' "$*" >&2; }

pkgs=()
for what in "$@"; do
	case "$what" in
	vm) command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86) ;;
	model) command -v npm >/dev/null || pkgs+=(npm) ;;
	*) say "unknown dependency group '$what' (vm, model)"; exit 2 ;;
	esac
done
[ ${#pkgs[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
	say "missing: ${pkgs[*]}. Install them as root with:"
	say "  apt-get install ${pkgs[*]}"
	exit 1
fi
say "installing ${pkgs[*]} from apt (once)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='[deps] installed ${Package} ${Version}\n' "$p" >&2
done
