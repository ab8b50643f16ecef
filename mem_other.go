// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package upm

import "fmt"

func mmapAnon(int) ([]byte, error) { return nil, BackendReason() }

func munmap([]byte) error { return BackendReason() }

func protect([]byte, bool) error { return BackendReason() }

func adviseFile(path string, _ fileOptions, _ []uintptr) (*Mapping, error) {
	return nil, fmt.Errorf("upm: advise file %s: %w", path, BackendReason())
}

func mapFile(path string) (*Mapping, error) {
	return nil, fmt.Errorf("upm: map file %s: %w", path, BackendReason())
}
