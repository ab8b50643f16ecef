// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package classifier

import "time"

// measure runs f and returns its wall time; the system CPU time of one
// thread is known on Linux only.
func measure(f func() error) (wall, sys time.Duration) {
	start := time.Now()
	_ = f()
	return time.Since(start), 0
}
