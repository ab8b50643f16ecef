// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// mmapAnon maps size bytes, rounded up to whole pages, of private anonymous
// memory without transparent huge pages.
func mmapAnon(size int) ([]byte, error) {
	length := (size + pageSize - 1) &^ (pageSize - 1)
	mem, err := unix.Mmap(-1, 0, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	// A huge page must be split before its base pages can merge, and
	// khugepaged does not collapse merged pages back; asking for base pages
	// from the start saves both. Kernels without transparent huge pages
	// refuse the advice, which is then moot.
	_ = unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	return mem, nil
}

func munmap(mem []byte) error {
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("munmap: %w", err)
	}
	return nil
}

// protect makes mem read-only, or readable and writable again.
func protect(mem []byte, writable bool) error {
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	if err := unix.Mprotect(mem, prot); err != nil {
		return fmt.Errorf("mprotect: %w", err)
	}
	return nil
}
