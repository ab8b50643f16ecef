//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
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
		return c.shared >= shared && c.sharing >= (workers-1)*shared, c.String() + "; " + ksmdState(t)
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

// TestUPMKsmdPassesUPMBy runs ksmd at its most aggressive beside processes
// that used UPM and whose merged pages were reclaimed to swap: ksmd must
// leave their rmap_items alone. (ksmd used to walk UPM memory and free the
// rmap_item of every page it did not find present, so swapped-out KSM pages
// lost their bookkeeping and counters.) Then the processes exit while
// ksmd runs, and nothing of theirs may outlive them (upmTest): no rmap_item,
// candidate, stable node or merge domain.
func TestUPMKsmdPassesUPMBy(t *testing.T) {
	upmTest(t)
	pages := sized(1024)
	swapOnZram(t, 256<<20)
	cg := memoryCgroup(t, "upmksmd", 1<<30)

	var ws []*worker
	for i := 0; i < 2; i++ {
		w := startWorker(t)
		w.moveTo(cg)
		w.must("map %d 0 7", pages)
		require.Equal(t, "upm", w.must("advise 0 %d", pages))
		ws = append(ws, w)
	}
	items := ws[0].ksmStat("ksm_rmap_items")
	require.Equal(t, pages, items, "one rmap_item per advised page")
	require.Equal(t, pages, ws[0].mustInt("stat"))

	// Every mapping of a KSM page that goes to swap is one whose
	// rmap_item ksmd used to free: a few suffice.
	reclaimKSMMappings(t, cg, ws, pages, 16)

	setKSM(t, map[string]string{"run": "1", "pages_to_scan": "10000", "sleep_millisecs": "1"})
	start := readCounter(t, ksmDir, "full_scans")
	eventually(t, time.Minute, "two full scans of ksmd", func() (bool, string) {
		n := readCounter(t, ksmDir, "full_scans")
		return n >= start+2, fmt.Sprintf("full_scans=%d", n)
	})
	for i, w := range ws {
		assert.Equal(t, items, w.ksmStat("ksm_rmap_items"), "worker %d: ksmd freed rmap_items of a UPM process", i)
		assert.Equal(t, pages, w.mustInt("stat"), "worker %d: ksm_merging_pages", i)
	}
	for _, w := range ws {
		w.must("check")
		w.exit()
	}
	// Exits while ksmd runs at full speed.
	for i := 0; i < 4; i++ {
		w := startWorker(t)
		w.moveTo(cg)
		w.must("map %d 0 7", pages)
		require.Equal(t, "upm", w.must("advise 0 %d", pages))
		w.exit()
	}
}
