//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// What the kernel does to merged pages after the advise (swap, copy on
// write, munmap, mremap) UPM follows without ksmd, whose passes leave UPM's
// processes alone: a swap round trip is merged again, and the counters
// match what each process maps.

// revisitTimeout bounds how long UPM may take to catch up after an event:
// "within seconds" on real hardware, slower under TCG and the debug kernel.
const revisitTimeout = time.Minute

// reclaimKSMMappings pushes the workers' merged pages (pages each, from
// page 0) out to swap through cg's memory.reclaim until at least enough
// mappings of KSM pages are gone from their page tables, and returns how
// many went. One write at a time, not os.WriteFile: Go restarts a write
// that a signal interrupted (EINTR), and a restarted memory.reclaim starts
// its work over, which under TCG never ends. A write fails with EAGAIN when
// it reclaimed less than asked; what counts is that KSM pages went, which
// the page tables tell. Pages two processes map go last, and how many go
// differs from run to run.
func reclaimKSMMappings(t *testing.T, cg string, ws []*worker, pages, enough int64) int64 {
	t.Helper()
	present := func() int64 {
		var n int64
		for _, w := range ws {
			n += w.mustInt("ksmpages 0 %d", pages)
		}
		return n
	}
	all := int64(len(ws)) * pages
	outcomes := map[string]int{}
	// Bounded by time, not by a count of tries: reclaim decides whether
	// to move anon pages from the active list to the inactive one from
	// the cgroup's LRU sizes as last flushed (vmscan.c,
	// prepare_scan_control()), and the periodic flush comes every 2 s.
	// The first reclaim activates every KSM page (two young mappings);
	// until the next flush shows the inactive list empty, no try
	// deactivates them, and 50 quick tries could all fall in that window
	// (seen in CI: all anon active, pgdeactivate 0).
	deadline := time.Now().Add(30 * time.Second)
	for present() > all-enough && time.Now().Before(deadline) {
		fd, err := unix.Open(filepath.Join(cg, "memory.reclaim"), unix.O_WRONLY, 0)
		require.NoError(t, err)
		_, err = unix.Write(fd, []byte(strconv.FormatInt(4*pages*pageSize, 10)))
		require.NoError(t, unix.Close(fd))
		if err != nil && err != unix.EAGAIN && err != unix.EINTR {
			t.Fatalf("memory.reclaim: %v", err)
		}
		outcomes[fmt.Sprint(err)]++
		if err != nil {
			time.Sleep(250 * time.Millisecond)
		}
	}
	out := all - present()
	require.GreaterOrEqual(t, out, enough, "merged pages went to swap; memory.reclaim returned %v\n%s", outcomes, reclaimState(t, cg))
	t.Logf("%d of %d mappings of KSM pages swapped out; memory.swap.current %d kB", out, all, readCounter(t, cg, "memory.swap.current")>>10)
	return out
}

// reclaimState is what says why reclaim took no KSM page: the cgroup's
// LRU sizes and scan counts, and the swap devices.
func reclaimState(t *testing.T, cg string) string {
	t.Helper()
	var b strings.Builder
	stat, err := os.ReadFile(filepath.Join(cg, "memory.stat"))
	require.NoError(t, err)
	for _, line := range strings.Split(string(stat), "\n") {
		name, _, _ := strings.Cut(line, " ")
		switch name {
		case "anon", "file", "active_anon", "inactive_anon", "active_file", "inactive_file", "unevictable",
			"pgscan", "pgsteal", "pgactivate", "pgdeactivate", "pgrefill", "swpout_zero", "zswpout":
			fmt.Fprintf(&b, "memory.stat %s\n", line)
		}
	}
	for _, name := range []string{"memory.current", "memory.swap.current", "memory.swap.max"} {
		v, err := os.ReadFile(filepath.Join(cg, name))
		require.NoError(t, err)
		fmt.Fprintf(&b, "%s %s", name, v)
	}
	swaps, err := os.ReadFile("/proc/swaps")
	require.NoError(t, err)
	b.Write(swaps)
	return b.String()
}

// TestUPMSwapRoundTripRemerges swaps merged pages out to zram and back in
// with ksmd stopped. A KSM page that comes back from swap is a new page for
// the first process that touches it and a copy for every other
// (ksm_might_need_to_copy()); upstream leaves it to ksmd to merge them
// again, which never walks UPM's processes. UPM must merge them again
// itself, without another advise.
func TestUPMSwapRoundTripRemerges(t *testing.T) {
	upmTest(t)
	pages := sized(1024)
	swapOnZram(t, 256<<20)
	cg := memoryCgroup(t, "upmswap", 1<<30)

	var ws []*worker
	for i := 0; i < 3; i++ {
		w := startWorker(t)
		w.moveTo(cg)
		w.must("map %d 0 7", pages)
		require.Equal(t, "upm", w.must("advise 0 %d", pages))
		ws = append(ws, w)
	}
	remerged := readCounter(t, upmDir, "pages_remerged")
	reclaimKSMMappings(t, cg, ws, pages, 64)

	// Back in: every page read, and its content checked.
	for _, w := range ws {
		w.must("check")
	}
	eventually(t, revisitTimeout, "the pages that came back from swap are merged again", func() (bool, string) {
		var mapped, merging int64
		for _, w := range ws {
			mapped += w.mustInt("ksmpages 0 %d", pages)
			merging += w.mustInt("stat")
		}
		c := readKSM(t)
		return mapped == 3*pages && merging == 3*pages && c.shared == pages && c.sharing == 2*pages,
			fmt.Sprintf("KSM pages mapped %d, ksm_merging_pages %d of %d; %s", mapped, merging, 3*pages, c)
	})
	assert.Greater(t, readCounter(t, upmDir, "pages_remerged"), remerged, "pages_remerged counts them")
	for _, w := range ws {
		assert.Equal(t, pages, w.ksmStat("ksm_rmap_items"), "one rmap_item per advised page")
		w.must("check")
	}
	for _, w := range ws {
		w.exit()
	}
}

// TestUPMRevisitRetriesBusyPages: pages that come back from swap while
// pinned (here by vmsplice, which faults them in; O_DIRECT I/O does the
// same) cannot merge when UPM revisits them. UPM must look at them again
// later, as ksmd would in its next pass, until they merge: else the pinned
// copies and their twins wait as candidates for good, with no advise or
// third twin to come.
func TestUPMRevisitRetriesBusyPages(t *testing.T) {
	upmTest(t)
	const pages, pinned = 64, 8
	swapOnZram(t, 64<<20)
	cg := memoryCgroup(t, "upmretry", 1<<30)
	first, busy := startWorker(t), startWorker(t)
	ws := []*worker{first, busy}
	for _, w := range ws {
		w.moveTo(cg)
		w.must("map %d 0 7", pages)
		require.Equal(t, "upm", w.must("advise 0 %d", pages))
	}
	reclaimKSMMappings(t, cg, ws, pages, 2*pages)

	// The first worker's pages come back as its own and wait as
	// candidates: no twin is back yet. (A KSM page that was still in the
	// swap cache comes back as itself, merged.)
	revisits := readCounter(t, upmDir, "revisits")
	first.must("check")
	eventually(t, revisitTimeout, "the first worker's pages are revisited", func() (bool, string) {
		mapped, c := first.mustInt("ksmpages 0 %d", pages), readKSM(t)
		return readCounter(t, upmDir, "revisits") > revisits && mapped+c.unshared == pages,
			fmt.Sprintf("KSM pages mapped %d; %s", mapped, c)
	})
	// The other's first pages come back pinned: copies that cannot merge
	// when UPM revisits them.
	revisits = readCounter(t, upmDir, "revisits")
	busy.must("pin 0 %d", pinned)
	eventually(t, revisitTimeout, "the pinned pages are revisited", func() (bool, string) {
		return readCounter(t, upmDir, "revisits") > revisits, readKSM(t).String()
	})
	copies := pinned - busy.mustInt("ksmpages 0 %d", pinned)
	t.Logf("%d of the %d pinned pages came back as copies; %s", copies, pinned, readKSM(t))
	if copies == 0 {
		t.Skip("every pinned page came back as its KSM page (still in the swap cache): nothing was left to retry")
	}
	busy.must("unpin")
	busy.must("check")
	eventually(t, revisitTimeout, "every page is merged again", func() (bool, string) {
		mapped := first.mustInt("ksmpages 0 %d", pages) + busy.mustInt("ksmpages 0 %d", pages)
		c := readKSM(t)
		return mapped == 2*pages && c == ksmCounters{shared: pages, sharing: pages},
			fmt.Sprintf("KSM pages mapped %d of %d; %s", mapped, 2*pages, c)
	})
	for _, w := range ws {
		w.must("check")
		w.exit()
	}
}

// TestUPMCountersFollowMappings changes merged pages three ways, one per
// process: a write (copy on write), munmap, and mremap (which unmerges the
// moved pages, as for any KSM page). Within a moment, with ksmd stopped,
// KSM's counters and each process's ksm_stat must count what the page
// tables map (kpageflags), and the rmap_items of what went must be freed.
// Before, every one of them stayed on its KSM page until the process
// exited: pages_sharing, ksm_merging_pages and profit overstated forever.
func TestUPMCountersFollowMappings(t *testing.T) {
	upmTest(t)
	shared := sized(512)
	changed := shared / 16 // three ranges of it, one per process

	var ws []*worker
	for i := 0; i < 3; i++ {
		w := startWorker(t)
		w.must("map %d 0 1", shared)
		require.Equal(t, "upm", w.must("advise 0 %d", shared))
		ws = append(ws, w)
	}
	c := readKSM(t)
	require.Equal(t, ksmCounters{shared: shared, sharing: 2 * shared}, c)
	revisits := readCounter(t, upmDir, "revisits")

	for i := int64(0); i < changed; i++ {
		ws[0].must("write %d", i)
	}
	ws[1].must("unmap %d %d", changed, changed)
	ws[2].must("remap %d %d", 2*changed, changed)
	for _, w := range ws {
		w.must("check")
	}

	eventually(t, revisitTimeout, "the counters follow the page tables", func() (bool, string) {
		var why string
		ok := true
		for i, w := range ws {
			mapped, merging := w.mustInt("ksmpages 0 %d", shared), w.mustInt("stat")
			if mapped != shared-changed || merging != mapped {
				ok = false
			}
			why += fmt.Sprintf("worker %d: KSM pages mapped %d, ksm_merging_pages %d; ", i, mapped, merging)
		}
		// Each changed page is still shared by the two others.
		c := readKSM(t)
		return ok && c == ksmCounters{shared: shared, sharing: 2*shared - 3*changed}, why + c.String()
	})
	assert.GreaterOrEqual(t, readCounter(t, upmDir, "revisits"), revisits+3, "one revisit per process at least")
	for i, w := range ws {
		assert.Equal(t, shared-changed, w.ksmStat("ksm_rmap_items"), "worker %d: the rmap_items of what it no longer maps merged are freed", i)
		w.must("check")
	}
	for _, w := range ws {
		w.exit()
	}
}
