// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import "fmt"

// AdviseError records a failed operation on a range of memory and the
// error that made it fail, as os.PathError does for a file.
//
// The sentinels and errnos it wraps still match through it:
// errors.Is(err, unix.EINVAL), errors.Is(err, ErrLimit) and
// errors.Is(err, ErrUnsupported) look at Err.
type AdviseError struct {
	// Op is what was done: "advise", "unadvise", "seal arena".
	Op string
	// Addr and Len are the range, page-aligned once it was checked.
	Addr uintptr
	Len  int
	// Advice names the madvise advice the kernel refused
	// ("MADV_UPM_MERGE", "MADV_MERGEABLE", "MADV_UNMERGEABLE"), or is empty
	// when the call failed before any system call.
	Advice string
	// Err is the cause: an errno, or an error wrapping ErrUnsupported,
	// ErrTooSmall, ErrClosed, ErrLimit.
	Err error
}

// Error returns "upm: OP LEN bytes at ADDR: ADVICE: ERR".
func (e *AdviseError) Error() string {
	s := fmt.Sprintf("upm: %s %d bytes at %#x", e.Op, e.Len, e.Addr)
	if e.Advice != "" {
		s += ": " + e.Advice
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns Err.
func (e *AdviseError) Unwrap() error { return e.Err }
