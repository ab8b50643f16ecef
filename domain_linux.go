// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

func sysMarkMergeDomain(dir string) error {
	if err := checkCgroup2(dir); err != nil {
		return err
	}
	if err := unix.Setxattr(dir, MergeDomainXattr, []byte("1"), 0); err != nil {
		return fmt.Errorf("upm: mark %s as a merge domain: %w", dir, err)
	}
	return nil
}

func sysUnmarkMergeDomain(dir string) error {
	if err := checkCgroup2(dir); err != nil {
		return err
	}
	if err := unix.Removexattr(dir, MergeDomainXattr); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("upm: unmark merge domain %s: %w", dir, err)
	}
	return nil
}

// checkCgroup2 refuses anything but a cgroup v2 directory: the kernel looks
// for the mark on the default hierarchy only, so a mark elsewhere would be
// silently ignored.
func checkCgroup2(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("upm: merge domain %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("upm: merge domain %s: not a cgroup v2 directory", dir)
	}
	return nil
}
