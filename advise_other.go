// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package upm

import "fmt"

func sysAdvise(mem []byte, d detection) *AdviseError {
	return &AdviseError{Op: "advise", Addr: addrOf(mem), Len: len(mem), Err: d.err}
}

func sysUnadvise(mem []byte) error {
	return &AdviseError{Op: "unadvise", Addr: addrOf(mem), Len: len(mem), Err: BackendReason()}
}

func sysAdvisedAny([]byte) bool { return false }

func sysMapped([]byte) bool { return true }

type smapsCache struct{}

func mergedBytes(mem []byte, _ *smapsCache) (int64, bool, error) {
	return 0, false, fmt.Errorf("upm: merged %d bytes at %#x: %w", len(mem), addrOf(mem), BackendReason())
}
