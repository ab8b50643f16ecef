// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// testHookMadvise, when set, runs before every madvise of the package with
// its arguments; tests use it to make the call slow, or fail it. A non-nil
// return is returned instead of calling the kernel.
var testHookMadvise func(mem []byte, advice int) error

// madvise applies advice to mem. The advice is a named constant of x/sys/unix
// or, for MADV_UPM_MERGE, the number the kernel published in sysfs.
//
// A failure is not retried. MADV_UPM_MERGE fails with EAGAIN when the kernel
// could not allocate its bookkeeping, not when a page is in transition, and a
// repeat walks the whole range again: whether that is worth it under memory
// pressure is the caller's call (see Advise).
func madvise(mem []byte, advice int) error {
	if h := testHookMadvise; h != nil {
		if err := h(mem, advice); err != nil {
			return err
		}
	}
	return unix.Madvise(mem, advice)
}

// sysAdvise advises mem with the backend of d. It never takes advice off
// memory when it fails: see adviseMem.
func sysAdvise(mem []byte, d detection) *AdviseError {
	advice, name := unix.MADV_MERGEABLE, "MADV_MERGEABLE"
	if d.backend == BackendUPM {
		advice, name = d.advice, "MADV_UPM_MERGE"
	}
	err := madvise(mem, advice)
	if err == nil {
		return nil
	}
	if d.backend == BackendUPM && errors.Is(err, unix.ENOSPC) {
		err = fmt.Errorf("%w: %w", ErrLimit, err)
	}
	return &AdviseError{Op: "advise", Addr: addrOf(mem), Len: len(mem), Advice: name, Err: err}
}

func sysUnadvise(mem []byte) error {
	if err := madvise(mem, unix.MADV_UNMERGEABLE); err != nil {
		return &AdviseError{Op: "unadvise", Addr: addrOf(mem), Len: len(mem), Advice: "MADV_UNMERGEABLE", Err: err}
	}
	return nil
}

// sysAdvisedAny reports whether any page of mem lies in a mapping marked
// mergeable (VmFlags mg), after an madvise that failed part of the way. When
// smaps cannot be read it says yes, so that the advice keeps an owner.
func sysAdvisedAny(mem []byte) bool {
	vmas, err := readSmaps()
	if err != nil {
		return true
	}
	for _, v := range overlapping(vmas, addrOf(mem), addrOf(mem)+uintptr(len(mem))) {
		if v.hasFlag("mg") {
			return true
		}
	}
	return false
}

// sysMapped reports whether every page of mem is mapped: msync fails with
// ENOMEM on a range with holes, and with MS_ASYNC does nothing else.
func sysMapped(mem []byte) bool {
	return !errors.Is(unix.Msync(mem, unix.MS_ASYNC), unix.ENOMEM)
}
