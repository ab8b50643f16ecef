//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestKSMFallbackMerges checks the KSM backend end to end on a stock kernel
// path: processes advise identical memory through the upm package (forced to
// the KSM backend, so this runs on the UPM kernel too), ksmd merges it, each
// process keeps its own data through writes, and Unadvise unmerges.
func TestKSMFallbackMerges(t *testing.T) {
	requireGuest(t)
	const workers = 4
	shared, unique := sized(1024), sized(16)
	setKSM(t, map[string]string{"run": "1", "pages_to_scan": "2000", "sleep_millisecs": "10"})

	var ws []*worker
	for i := 0; i < workers; i++ {
		w := startWorker(t, "UPM_BACKEND=ksm")
		w.must("map %d %d %d", shared, unique, 100+i)
		require.Equal(t, "ksm", w.must("advise 0 %d", shared+unique))
		ws = append(ws, w)
	}

	eventually(t, 3*time.Minute, "ksmd merges the shared pages", func() (bool, string) {
		c := readKSM(t)
		return c.shared >= shared && c.sharing >= (workers-1)*shared, c.String()
	})
	for _, w := range ws {
		eventually(t, time.Minute, "every worker sees its shared pages merged", func() (bool, string) {
			n := w.mustInt("stat")
			return n == shared, fmt.Sprintf("ksm_merging_pages=%d", n)
		})
		require.Equal(t, int64(shared*pageSize), w.mustInt("merged"), "Region.Merged")
		w.must("check")
	}

	// A write after merging gives the writer its own copy; the others
	// keep the shared content.
	ws[0].must("write 3")
	for _, w := range ws {
		w.must("check")
	}
	require.Equal(t, int64((shared-1)*pageSize), ws[0].mustInt("merged"))

	// Unadvise breaks every merge of that process at once.
	ws[1].must("unadvise")
	require.Equal(t, int64(0), ws[1].mustInt("ksmpages 0 %d", shared+unique))
	for _, w := range ws {
		w.must("check")
	}

	for _, w := range ws {
		w.exit()
	}
	eventually(t, 3*time.Minute, "ksmd forgets the exited processes", func() (bool, string) {
		c := readKSM(t)
		return c.shared == 0 && c.sharing == 0, c.String()
	})
}
