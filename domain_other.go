// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package upm

import "fmt"

func sysMarkMergeDomain(dir, name string) error {
	return fmt.Errorf("upm: mark %s as a merge domain: %w", dir, ErrUnsupported)
}

func sysUnmarkMergeDomain(dir string) error {
	return fmt.Errorf("upm: unmark merge domain %s: %w", dir, ErrUnsupported)
}

func sysMergeDomainOf(pid int) (MergeDomain, error) {
	return MergeDomain{Processes: -1}, fmt.Errorf("upm: merge domain of process %d: %w", pid, ErrUnsupported)
}

// CgroupV2Root returns where the cgroup v2 hierarchy is mounted on Linux:
// /sys/fs/cgroup here, where there is none.
func CgroupV2Root() string { return "/sys/fs/cgroup" }
