// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package classifier

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// measure runs f on one locked OS thread and returns its wall time and the
// system CPU time that thread spent, which for an madvise call is the
// kernel's work on the advice: with UPM the merging itself.
func measure(f func() error) (wall, sys time.Duration) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after unix.Rusage
	errBefore := unix.Getrusage(unix.RUSAGE_THREAD, &before)
	start := time.Now()
	_ = f()
	wall = time.Since(start)
	if errBefore == nil && unix.Getrusage(unix.RUSAGE_THREAD, &after) == nil {
		sys = time.Duration(after.Stime.Nano() - before.Stime.Nano())
	}
	return wall, sys
}
