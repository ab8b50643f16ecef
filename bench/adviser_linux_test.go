// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFillPages(t *testing.T) {
	a, b, c := make([]byte, 64<<10), make([]byte, 64<<10), make([]byte, 64<<10)
	fillPages(a, 7)
	fillPages(b, 7)
	fillPages(c, 8)
	assert.Equal(t, a, b, "one seed, one content")
	seen := map[string]bool{}
	for off := 0; off < len(a); off += 4096 {
		page := string(a[off : off+4096])
		assert.False(t, seen[page], "page %d repeats an earlier one", off/4096)
		seen[page] = true
		assert.False(t, bytes.Equal(a[off:off+4096], c[off:off+4096]), "seeds 7 and 8 share page %d", off/4096)
	}
}

// TestAdviser runs adviser processes through their protocol as
// BenchmarkAdvise does with the upm backend: with ksm (MADV_MERGEABLE of the
// adviser's own memory, which any Linux with KSM takes), with none (the
// advise call's error reaches the harness), and with a wrong spec.
func TestAdviser(t *testing.T) {
	none, err := startAdviser(adviserSpec{Bytes: 2 << 20, Seed: 1}, "none")
	require.NoError(t, err)
	defer none.stop()
	_, err = none.advise()
	assert.ErrorContains(t, err, "UPM_BACKEND=none")

	a, err := startAdviser(adviserSpec{Bytes: 4 << 20, Seed: 1}, "ksm")
	require.NoError(t, err)
	defer a.stop()
	assert.EqualValues(t, 1024, a.pages())
	r, err := a.advise()
	require.NoError(t, err)
	assert.Positive(t, r.Wall)
	assert.False(t, r.Returned.IsZero())

	_, err = startAdviser(adviserSpec{Bytes: 4096, Seed: 1}, "none")
	assert.ErrorContains(t, err, "multiple of 2 MiB")
}

func TestMapAligned(t *testing.T) {
	mem, err := mapAligned(4<<20, 2<<20)
	require.NoError(t, err)
	assert.Len(t, mem, 4<<20)
	assert.Zero(t, addrOf(mem)%(2<<20))
}
