//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// setMaxPageSharing sets KSM's max_page_sharing for the test, which KSM
// allows only while it has no KSM pages, and puts 256 back after it.
func setMaxPageSharing(t *testing.T, v string) {
	t.Helper()
	set := func(v string) error {
		return os.WriteFile(filepath.Join(ksmDir, "max_page_sharing"), []byte(v), 0)
	}
	require.NoError(t, set(v), "max_page_sharing=%s (KSM pages left: %s)", v, readKSM(t))
	t.Cleanup(func() {
		// The workers were killed just before; an exiting mm may still
		// hold KSM pages for a moment.
		eventually(t, revisitTimeout, "max_page_sharing back to 256", func() (bool, string) {
			err := set("256")
			return err == nil, fmt.Sprintf("%v; %s", err, readKSM(t))
		})
	})
}

// TestUPMChainsInADomain: KSM pages that reach max_page_sharing become
// chains of KSM pages of one content in their domain's stable tree. The
// tree is ordered by content hash, then content; a descent that took a
// wrong turn would miss the full KSM page and make a second node of the
// same content beside it, not a chain. Many contents make the tree deep.
func TestUPMChainsInADomain(t *testing.T) {
	upmTest(t)
	setMaxPageSharing(t, "2")
	shared := sized(2048)
	u := readUPM(t)
	var ws []*worker
	for i := 0; i < 4; i++ {
		w := startWorker(t)
		w.must("map %d 0 %d", shared, 3200+i)
		require.Equal(t, "upm", w.must("advise 0 %d", shared))
		ws = append(ws, w)
	}
	// Two pairs a content: the first pair's KSM page is full, so the
	// third page waits as a candidate until the fourth makes a second
	// KSM page with it, a dup chained beside the first.
	assert.Equal(t, ksmCounters{shared: 2 * shared, sharing: 2 * shared}, readKSM(t))
	assert.Equal(t, shared, readCounter(t, ksmDir, "stable_node_chains"), "one chain a content")
	assert.Equal(t, 2*shared, readCounter(t, ksmDir, "stable_node_dups"), "two KSM pages a chain")
	d := readUPM(t).sub(u)
	assert.Equal(t, 4*shared, d.mergedNew, "two pairs a content")
	assert.Zero(t, d.mergedStable, "no KSM page had room")
	assert.Zero(t, d.skipped)

	// A fifth finds every KSM page of its content full: a candidate.
	w := startWorker(t)
	w.must("map %d 0 %d", shared, 3204)
	require.Equal(t, "upm", w.must("advise 0 %d", shared))
	assert.Equal(t, ksmCounters{shared: 2 * shared, sharing: 2 * shared, unshared: shared}, readKSM(t))
	assert.Equal(t, shared, readUPM(t).sub(u).candidates)
	for _, w := range append(ws, w) {
		w.must("check")
		w.exit()
	}
}
