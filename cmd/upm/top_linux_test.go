// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestTopShowsThisProcess advises memory of the test process itself with
// MADV_MERGEABLE and finds it in the real /proc, on kernels whose ksm_stat
// says which processes have mergeable memory.
func TestTopShowsThisProcess(t *testing.T) {
	stat, err := readKSMStat("/proc/self/ksm_stat")
	if err != nil || stat["ksm_mergeable"] == "" {
		t.Skip("this kernel's /proc/PID/ksm_stat has no ksm_mergeable (Linux 6.8 and later have it)")
	}
	mem, err := unix.Mmap(-1, 0, 16*os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	require.NoError(t, unix.Madvise(mem, unix.MADV_MERGEABLE))
	r, err := readTop("/proc", nil)
	require.NoError(t, err)
	for _, p := range r.Processes {
		if p.PID == os.Getpid() {
			assert.GreaterOrEqual(t, p.AdvisedRanges, 1)
			assert.GreaterOrEqual(t, p.AdvisedBytes, uint64(len(mem)))
			return
		}
	}
	t.Fatalf("this process (%d) is not among %d shown", os.Getpid(), len(r.Processes))
}
