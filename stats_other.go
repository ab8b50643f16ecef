// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package upm

import "fmt"

func processStats(*ProcessStats) error {
	return fmt.Errorf("upm: process stats: %w", BackendReason())
}

func systemStats() (SystemStats, error) {
	return SystemStats{}, fmt.Errorf("upm: system stats: %w", BackendReason())
}
