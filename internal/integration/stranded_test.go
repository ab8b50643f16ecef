//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// A KSM page that nobody maps any more is freed when its last reference
// goes, and a freed page is no KSM page. One that stays a KSM page with no
// mapping is held by a reference somebody forgot: a leaked page, which
// kmemleak cannot see (it tracks slab objects, not pages) and which also
// makes its memory block impossible to offline. strandedKSMPages finds
// them in /proc/kpageflags and /proc/kpagecount (root only).

// Page flags of /proc/kpageflags besides kpfKSM and kpfTHP.
const (
	kpfSlab      = 7
	kpfSwapCache = 13
)

// strandedPage is a KSM page mapped by nobody.
type strandedPage struct{ pfn, flags uint64 }

func (p strandedPage) String() string { return fmt.Sprintf("pfn %#x flags %#x", p.pfn, p.flags) }

// strandedKSMPages returns the KSM pages that no page table maps, leaving
// out those in the swap cache (reclaim frees them in its own time) and slab
// pages: 6.12's kpageflags reads a slab's own fields where a page keeps its
// mapping, and reports some slab pages as KSM pages.
func strandedKSMPages() ([]strandedPage, error) {
	flagsFile, err := os.Open("/proc/kpageflags")
	if err != nil {
		return nil, err
	}
	defer flagsFile.Close()
	countFile, err := os.Open("/proc/kpagecount")
	if err != nil {
		return nil, err
	}
	defer countFile.Close()
	const chunk = 1 << 16 // page frames a read
	flags, counts := make([]byte, 8*chunk), make([]byte, 8*chunk)
	var stranded []strandedPage
	for first := uint64(0); ; first += chunk {
		nf, errf := flagsFile.ReadAt(flags, int64(first*8))
		nc, errc := countFile.ReadAt(counts, int64(first*8))
		n := min(nf, nc) / 8
		for i := 0; i < n; i++ {
			f := binary.LittleEndian.Uint64(flags[8*i:])
			if f&(1<<kpfKSM) == 0 || f&(1<<kpfSwapCache) != 0 || f&(1<<kpfSlab) != 0 {
				continue
			}
			if binary.LittleEndian.Uint64(counts[8*i:]) == 0 {
				stranded = append(stranded, strandedPage{first + uint64(i), f})
			}
		}
		if errf == io.EOF || errc == io.EOF || n < chunk {
			return stranded, nil
		}
		if errf != nil {
			return nil, errf
		}
		if errc != nil {
			return nil, errc
		}
	}
}

// checkNoStrandedPages fails the test if KSM pages mapped by nobody appear
// that were not there at its start (before), once per-CPU page batches
// have had their chance to let go: compaction drains them on every CPU.
func checkNoStrandedPages(t *testing.T, before []strandedPage) {
	t.Helper()
	old := map[uint64]bool{}
	for _, p := range before {
		old[p.pfn] = true
	}
	fresh := func() ([]strandedPage, error) {
		now, err := strandedKSMPages()
		var n []strandedPage
		for _, p := range now {
			if !old[p.pfn] {
				n = append(n, p)
			}
		}
		return n, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := fresh()
		if err != nil {
			t.Errorf("looking for stranded KSM pages: %v", err)
			return
		}
		if len(n) == 0 {
			return
		}
		if time.Now().After(deadline) {
			words := make([]string, 0, 8)
			for _, p := range n[:min(len(n), 8)] {
				words = append(words, p.String())
			}
			t.Errorf("%d KSM pages mapped by nobody stay allocated after every process exited (leaked references): %s",
				len(n), strings.Join(words, "; "))
			return
		}
		_ = os.WriteFile("/proc/sys/vm/compact_memory", []byte("1"), 0)
		time.Sleep(500 * time.Millisecond)
	}
}
