//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestUPMWrittenWhileAdvisedStaysFindable: a page written while it is
// advised must not leave a KSM page indexed under content it no longer has.
//
// UPM hashes a page before it write-protects and compares it, and the
// index of KSM pages is keyed by that hash alone: a joiner found there is
// not compared again until it is write-protected, and a mismatch then
// leaves it unmerged. If a new KSM page were keyed by the hash its page had
// before a write (X) while holding the content after it (Y), every later
// page of content X in the domain would be sent to it, fail the compare,
// and stay unmerged for as long as that KSM page lives.
//
// The race made on purpose: a holds candidates of content X that it then
// changed to Y (their index entries still say X); b advises the same pages
// while a thread of its own flips them between X and Y, so that some are
// hashed as X and merged with a's as Y. Then c and d advise plain X: d must
// merge every page, with c.
func TestUPMWrittenWhileAdvisedStaysFindable(t *testing.T) {
	upmTest(t)
	pages := sized(2048)
	const y = 0xa5 // byte 100 of content Y

	a := startWorker(t)
	a.must("map %d 0 1", pages)
	require.Equal(t, "upm", a.must("advise 0 %d", pages))
	a.must("poke 0 %d %d", pages, y)

	// How often the race is won is up to the scheduler; the test means
	// something only once some of b's pages merged with a's (as Y), so a
	// new b tries again if none did.
	var merged int64
	for try := 1; try <= 5 && merged == 0; try++ {
		b := startWorker(t)
		b.must("map %d 0 1", pages)
		b.must("flip 0 %d %d", pages, y)
		before := readUPM(t)
		b.must("advise 0 %d", pages)
		b.must("flip off")
		raced := readUPM(t).sub(before)
		merged = raced.mergedNew / 2
		t.Logf("b #%d, written while advised: %d pages advised, %d merged with a's into new KSM pages, %d skipped",
			try, raced.advised, merged, raced.skipped)
		b.exit()
	}
	require.NotZero(t, merged, "no page of b merged with a's in 5 tries: the race was not made, the test shows nothing")

	c, d := startWorker(t), startWorker(t)
	c.must("map %d 0 1", pages)
	d.must("map %d 0 1", pages)
	c.must("advise 0 %d", pages)
	d.must("advise 0 %d", pages)
	assert.Equal(t, pages, d.mustInt("stat"), "every page of d merges with c's: a KSM page keyed by stale content turns none away")
	assert.Equal(t, pages, c.mustInt("stat"))
	c.must("check")
	d.must("check")
	a.must("check")
	c.exit()
	d.exit()
	a.exit()
}
