// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

// Tests of synchronous merging, which need a kernel with UPM. They skip
// elsewhere, and run in the VM of make test.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testData is what a test and its holder process advise: pages of which the
// first shared are the same in both (they depend on seed only), and the
// others unique to the process (they depend on salt too).
type testData struct {
	mode          string // "arena", "heap" or "file"
	seed          uint64
	pages, shared int
	file          string // for mode "file"
}

func (d testData) bytes(salt uint64) []byte {
	b := pattern(d.seed, d.pages*pageSize)
	copy(b[d.shared*pageSize:], pattern(d.seed^salt<<32^0x5a17, (d.pages-d.shared)*pageSize))
	return b
}

func (d testData) env() []string {
	return []string{
		"UPM_TEST_MODE=" + d.mode,
		"UPM_TEST_SEED=" + strconv.FormatUint(d.seed, 10),
		"UPM_TEST_PAGES=" + strconv.Itoa(d.pages),
		"UPM_TEST_SHARED=" + strconv.Itoa(d.shared),
		"UPM_TEST_FILE=" + d.file,
	}
}

func testDataFromEnv() (testData, error) {
	d := testData{mode: os.Getenv("UPM_TEST_MODE"), file: os.Getenv("UPM_TEST_FILE")}
	var err [3]error
	d.seed, err[0] = strconv.ParseUint(os.Getenv("UPM_TEST_SEED"), 10, 64)
	d.pages, err[1] = strconv.Atoi(os.Getenv("UPM_TEST_PAGES"))
	d.shared, err[2] = strconv.Atoi(os.Getenv("UPM_TEST_SHARED"))
	for _, e := range err {
		if e != nil {
			return d, e
		}
	}
	return d, nil
}

// advised is memory a test advised, and how to let go of it.
type advised struct {
	region *Region
	mem    []byte // the advised bytes
	close  func() error
}

// advise puts the data of d in memory of its mode and advises it.
func (d testData) advise(salt uint64) (advised, error) {
	switch d.mode {
	case "arena":
		a, err := NewArena(d.pages * pageSize)
		if err != nil {
			return advised{}, err
		}
		copy(a.Bytes(), d.bytes(salt))
		r, err := a.Seal()
		if err != nil {
			a.Close()
			return advised{}, err
		}
		return advised{region: r, mem: a.Bytes(), close: a.Close}, nil
	case "heap":
		buf := d.bytes(salt)
		r, err := Advise(buf)
		if err != nil {
			return advised{}, err
		}
		if r.Len() != len(buf) {
			r.Unadvise()
			return advised{}, fmt.Errorf("a %d-byte heap slice is not page-aligned: %d bytes advised", len(buf), r.Len())
		}
		return advised{region: r, mem: buf, close: r.Unadvise}, nil
	case "file":
		m, err := AdviseFile(d.file)
		if err != nil {
			return advised{}, err
		}
		return advised{region: m.Region(), mem: m.Bytes(), close: m.Close}, nil
	}
	return advised{}, fmt.Errorf("no mode %q", d.mode)
}

// helperUPMHold advises the test data of its environment, says "ready",
// answers "report" with the merged bytes of its Region, and exits when its
// standard input closes.
func helperUPMHold() error {
	d, err := testDataFromEnv()
	if err != nil {
		return err
	}
	a, err := d.advise(uint64(os.Getpid()))
	if err != nil {
		return err
	}
	fmt.Println("ready")
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := readLine(in)
		if err == io.EOF {
			return a.close()
		}
		if err != nil {
			return err
		}
		if line == "report" {
			merged, exact, err := a.region.Merged()
			if err != nil {
				return err
			}
			fmt.Printf("merged %d %t\n", merged, exact)
		}
	}
}

// holder is a child process that advised test data.
type holder struct {
	stdin  io.WriteCloser
	stdout *bufio.Reader
}

func startHolder(t *testing.T, d testData) *holder {
	t.Helper()
	cmd := helperCommand(t, "upm-hold", d.env()...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		stdin.Close()
		assert.NoError(t, cmd.Wait(), "holder process")
	})
	h := &holder{stdin: stdin, stdout: bufio.NewReader(stdout)}
	line, err := readLine(h.stdout)
	require.NoError(t, err, "holder did not start")
	require.Equal(t, "ready", line)
	return h
}

// merged asks the holder how many bytes of its Region are merged.
func (h *holder) merged(t *testing.T) (int64, bool) {
	t.Helper()
	_, err := io.WriteString(h.stdin, "report\n")
	require.NoError(t, err)
	line, err := readLine(h.stdout)
	require.NoError(t, err)
	var merged int64
	var exact bool
	_, err = fmt.Sscanf(line, "merged %d %t", &merged, &exact)
	require.NoError(t, err, line)
	return merged, exact
}

// freshSeed returns a seed no earlier test used, so that no page of the data
// can merge with pages left by other runs.
func freshSeed() uint64 {
	return uint64(time.Now().UnixNano())
}

// requireMergedNow checks that the Region's merged bytes are want: exactly
// when the kernel can tell, else at most want.
func requireMergedNow(t *testing.T, r *Region, want int) {
	t.Helper()
	merged, exact, err := r.Merged()
	require.NoError(t, err)
	if exact {
		require.Equal(t, int64(want), merged, "merged bytes right after advising: %d pages, want %d", merged/int64(pageSize), want/pageSize)
	} else {
		require.LessOrEqual(t, merged, int64(want))
		t.Logf("merged bytes are a lower bound here: %d", merged)
	}
}

func TestUPMMergesAcrossProcesses(t *testing.T) {
	requireUPM(t)
	for _, mode := range []string{"arena", "heap"} {
		t.Run(mode, func(t *testing.T) {
			d := testData{mode: mode, seed: freshSeed(), pages: 64, shared: 48}
			before, err := ReadSystemStats()
			require.NoError(t, err)
			procBefore, err := ReadProcessStats()
			require.NoError(t, err)

			h := startHolder(t, d)
			inChild, _ := h.merged(t)
			assert.Zero(t, inChild, "the first process's pages merged with nothing")

			a, err := d.advise(uint64(os.Getpid()))
			require.NoError(t, err)
			defer a.close()
			// Synchronous: merged when Advise returns, with no wait.
			requireMergedNow(t, a.region, d.shared*pageSize)
			inChild, exact := h.merged(t)
			if exact {
				assert.Equal(t, int64(d.shared*pageSize), inChild, "the holder's twins of the shared pages")
			}
			assert.Equal(t, d.bytes(uint64(os.Getpid())), a.mem, "merging changed the data")

			proc, err := ReadProcessStats()
			require.NoError(t, err)
			if proc.KSMStat {
				assert.GreaterOrEqual(t, proc.MergingPages, procBefore.MergingPages+uint64(d.shared), "ksm_merging_pages")
			}
			after, err := ReadSystemStats()
			require.NoError(t, err)
			require.True(t, after.UPM.Present)
			assert.GreaterOrEqual(t, after.UPM.Calls, before.UPM.Calls+2)
			assert.GreaterOrEqual(t, after.UPM.PagesAdvised, before.UPM.PagesAdvised+uint64(2*d.pages))
			assert.GreaterOrEqual(t,
				after.UPM.PagesMergedNew+after.UPM.PagesMergedStable,
				before.UPM.PagesMergedNew+before.UPM.PagesMergedStable+uint64(d.shared))
			assert.Greater(t, after.KSM.PagesShared+after.KSM.PagesSharing, before.KSM.PagesShared+before.KSM.PagesSharing,
				"UPM's merged pages are KSM pages")
		})
	}
}

func TestUPMAdviseFileAcrossProcesses(t *testing.T) {
	requireUPM(t)
	d := testData{mode: "file", seed: freshSeed(), pages: 32, shared: 32}
	d.file = filepath.Join(t.TempDir(), "weights.bin")
	require.NoError(t, os.WriteFile(d.file, d.bytes(0), 0o644))

	h := startHolder(t, d)
	m, err := AdviseFile(d.file)
	require.NoError(t, err)
	defer m.Close()
	requireMergedNow(t, m.Region(), d.pages*pageSize)
	if merged, exact := h.merged(t); exact {
		assert.Equal(t, int64(d.pages*pageSize), merged)
	}
	assert.Equal(t, d.bytes(0), m.Bytes())
}

func TestUPMMergesWithinProcess(t *testing.T) {
	requireUPM(t)
	d := testData{mode: "arena", seed: freshSeed(), pages: 16, shared: 16}
	first, err := d.advise(0)
	require.NoError(t, err)
	defer first.close()
	requireMergedNow(t, first.region, 0)

	second, err := d.advise(0)
	require.NoError(t, err)
	defer second.close()
	requireMergedNow(t, second.region, d.pages*pageSize)
	requireMergedNow(t, first.region, d.pages*pageSize)
}

func TestUPMCopyOnWriteAndUnadvise(t *testing.T) {
	requireUPM(t)
	// The twin lives in an arena, without huge pages: were both in one
	// transparent huge page of the heap, the kernel would split it and
	// merge them only on the next advice.
	d := testData{mode: "arena", seed: freshSeed(), pages: 16, shared: 16}
	twin, err := d.advise(0)
	require.NoError(t, err)
	defer twin.close()

	buf := d.bytes(0)
	r, err := Advise(buf)
	require.NoError(t, err)
	require.Equal(t, len(buf), r.Len())
	requireMergedNow(t, r, len(buf))

	// A write unshares the page it hits, and only that page.
	buf[5*pageSize+17] ^= 0xff
	assert.Equal(t, d.bytes(0), twin.mem, "a write to a merged page reached its twin")
	requireMergedNow(t, r, len(buf)-pageSize)
	// The twin's page 5 is still the KSM page, now mapped once: KSM pages
	// stay KSM pages when their other mappings go (as with ksmd).
	requireMergedNow(t, twin.region, len(buf))

	require.NoError(t, r.Unadvise())
	assert.False(t, mergeable(t, addrOf(buf)))
	if merged, exact := pageFlagsMerged(buf); exact {
		assert.Zero(t, merged, "pages still merged after Unadvise")
	}
	assert.Equal(t, byte(d.bytes(0)[5*pageSize+17]^0xff), buf[5*pageSize+17])
	runtime.KeepAlive(buf)
}

func TestUPMSkipsAbsentPages(t *testing.T) {
	requireUPM(t)
	d := testData{mode: "arena", seed: freshSeed(), pages: 8, shared: 8}
	twin, err := d.advise(0)
	require.NoError(t, err)
	defer twin.close()

	// Write every other page; the others are never touched.
	a, err := NewArena(d.pages * pageSize)
	require.NoError(t, err)
	defer a.Close()
	data := d.bytes(0)
	mem := a.Bytes()
	for page := 0; page < d.pages; page += 2 {
		copy(mem[page*pageSize:(page+1)*pageSize], data[page*pageSize:])
	}
	r, err := a.Seal()
	require.NoError(t, err)
	requireMergedNow(t, r, d.pages/2*pageSize)
	present, err := presentPages(mem)
	require.NoError(t, err)
	assert.Equal(t, d.pages/2, present, "advising populated absent pages")
}
