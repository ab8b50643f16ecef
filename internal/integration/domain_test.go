//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/upm-project/upm"
)

// cgroupV2Root returns the guest's cgroup v2 hierarchy, mounting it
// beside u-root's cgroup v1 layout (at /sys/fs/cgroup/unified) if needed,
// as the bench does (bench/system_linux.go). Merge domains and the memory
// limits of the stress tests live there.
func cgroupV2Root(t *testing.T) string {
	t.Helper()
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir
		}
	}
	dir := "/sys/fs/cgroup/unified"
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, unix.Mount("cgroup2", dir, "cgroup2", 0, ""), "mount cgroup2 at %s", dir)
	return dir
}

// makeCgroups makes the cgroups named by paths below root and removes them,
// children first, when the test ends (after its workers were killed).
func makeCgroups(t *testing.T, root string, paths ...string) {
	t.Helper()
	var dirs []string
	for _, p := range paths {
		require.NoError(t, os.MkdirAll(filepath.Join(root, p), 0o755))
		for dir := filepath.Join(root, p); dir != root && !slices.Contains(dirs, dir); dir = filepath.Dir(dir) {
			dirs = append(dirs, dir)
		}
	}
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	t.Cleanup(func() {
		for _, dir := range dirs {
			// A killed worker leaves its cgroup a moment later.
			for try := 0; try < 100; try++ {
				if err := os.Remove(dir); !errors.Is(err, unix.EBUSY) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
}

// moveTo puts the worker into the cgroup dir.
func (w *worker) moveTo(dir string) {
	w.t.Helper()
	require.NoError(w.t, os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(w.cmd.Process.Pid)), 0))
}

// ksmStat reads a field of the worker's /proc/PID/ksm_stat.
func (w *worker) ksmStat(field string) int64 {
	w.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/ksm_stat", w.cmd.Process.Pid))
	require.NoError(w.t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+" "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			require.NoError(w.t, err)
			return n
		}
	}
	w.t.Fatalf("no %s in ksm_stat:\n%s", field, b)
	return 0
}

// TestUPMMergeDomains proves the tenant isolation: identical pages advised
// in two merge domains become two KSM pages, one per domain; the same pages
// within a domain, each process in a cgroup of its own below the marked
// parent, are merged at once; processes in unmarked sibling cgroups (the
// default) share nothing; and ksmd, merging the same content for processes
// that never used UPM, never joins a page UPM made.
func TestUPMMergeDomains(t *testing.T) {
	upmTest(t)
	shared := sized(1024)
	root := cgroupV2Root(t)
	makeCgroups(t, root, "upmdomains/a/0", "upmdomains/a/1", "upmdomains/b/0", "upmdomains/b/1",
		"upmdomains/solo0", "upmdomains/solo1")
	base := filepath.Join(root, "upmdomains")
	for _, tenant := range []string{"a", "b"} {
		require.NoError(t, upm.MarkMergeDomain(filepath.Join(base, tenant)))
	}
	before := readUPM(t)

	// Two tenants, two instances each, every page the same everywhere.
	tenants := map[string][]*worker{}
	for _, cg := range []string{"a/0", "a/1", "b/0", "b/1"} {
		w := startWorker(t)
		w.moveTo(filepath.Join(base, cg))
		w.must("map %d 0 7", shared)
		require.Equal(t, "upm", w.must("advise 0 %d", shared))
		tenants[cg[:1]] = append(tenants[cg[:1]], w)
	}
	c := readKSM(t)
	assert.Equal(t, 2*shared, c.shared, "one KSM page per page per domain: %s", c)
	assert.Equal(t, 2*shared, c.sharing, "%s", c)
	assert.Equal(t, shared, readCounter(t, ksmDir, "stable_node_chains"), "each content is one chain")
	assert.Equal(t, 2*shared, readCounter(t, ksmDir, "stable_node_dups"), "with one dup per domain")
	assert.Equal(t, int64(4*shared), readUPM(t).sub(before).mergedNew, "each domain's second instance pairs with its first")
	for _, ws := range tenants {
		for _, w := range ws {
			assert.Equal(t, shared, w.mustInt("stat"), "ksm_merging_pages")
			w.must("check")
		}
	}

	// Unmarked cgroups are domains of their own: nothing is shared.
	var solo []*worker
	for _, cg := range []string{"solo0", "solo1"} {
		w := startWorker(t)
		w.moveTo(filepath.Join(base, cg))
		w.must("map %d 0 7", shared)
		require.Equal(t, "upm", w.must("advise 0 %d", shared))
		solo = append(solo, w)
	}
	c = readKSM(t)
	assert.Equal(t, 2*shared, c.shared, "no merge across unmarked cgroups: %s", c)
	assert.Equal(t, 2*shared, readUPM(t).candidates, "both wait as candidates")
	for _, w := range solo {
		assert.Zero(t, w.mustInt("stat"))
	}

	// A write in one domain leaves the other domain's copy alone.
	tenants["a"][0].must("write 3")
	for _, w := range append(append(tenants["a"], tenants["b"]...), solo...) {
		w.must("check")
	}
	assert.Equal(t, shared, tenants["b"][0].mustInt("stat"))

	// ksmd merges the same content for two KSM-backend processes in a
	// KSM page of its own, and leaves UPM's pages and candidates alone.
	setKSM(t, map[string]string{"run": "1", "pages_to_scan": "2000", "sleep_millisecs": "10"})
	var stock []*worker
	for i := 0; i < 2; i++ {
		w := startWorker(t, "UPM_BACKEND=ksm")
		w.must("map %d 0 7", shared)
		require.Equal(t, "ksm", w.must("advise 0 %d", shared))
		stock = append(stock, w)
	}
	for _, w := range stock {
		eventually(t, 3*time.Minute, "ksmd merges the KSM-backend processes", func() (bool, string) {
			n := w.mustInt("stat")
			return n == shared, fmt.Sprintf("ksm_merging_pages=%d", n)
		})
	}
	c = readKSM(t)
	assert.Equal(t, 3*shared, c.shared, "ksmd made KSM pages of its own: %s", c)
	assert.Equal(t, 3*shared, readCounter(t, ksmDir, "stable_node_dups"))
	for _, w := range tenants["b"] {
		assert.Equal(t, shared, w.mustInt("stat"), "UPM's pages keep their sharers only")
	}
	for _, w := range solo {
		assert.Zero(t, w.mustInt("stat"), "ksmd leaves processes that used UPM alone")
	}
	for _, w := range stock {
		w.must("check")
		w.exit()
	}
	eventually(t, 3*time.Minute, "ksmd forgets the exited KSM-backend processes", func() (bool, string) {
		c := readKSM(t)
		return c.shared == 2*shared && c.sharing == 2*shared, c.String()
	})

	for _, w := range append(append(tenants["a"], tenants["b"]...), solo...) {
		w.must("check")
		w.exit()
	}
}

// TestUPMPageLimit checks max_pages_per_process: a call that would keep
// more of the process's pages in the index fails with ENOSPC, after
// indexing the pages up to the limit; nothing is lost or left behind; and
// with room again the same call succeeds.
func TestUPMPageLimit(t *testing.T) {
	upmTest(t)
	const pages, limit = 512, 300
	knob := filepath.Join(upmDir, "max_pages_per_process")
	old, err := os.ReadFile(knob)
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.WriteFile(knob, old, 0) })
	require.NoError(t, os.WriteFile(knob, []byte(strconv.Itoa(limit)), 0))
	advice := strconv.FormatInt(readCounter(t, upmDir, "advice"), 10)
	before := readUPM(t)

	a := startWorker(t)
	a.must("map %d 0 9", pages)
	require.Equal(t, "ENOSPC", a.must("madvise %s 0 %d", advice, pages))
	assert.Equal(t, int64(limit), a.ksmStat("ksm_rmap_items"), "the index holds the process's pages up to the limit")
	d := readUPM(t).sub(before)
	assert.Equal(t, int64(limit), d.advised)
	assert.Equal(t, int64(limit), d.candidates)

	// A second process within the limit merges with what was indexed.
	b := startWorker(t)
	b.must("map %d 0 9", pages)
	require.Equal(t, "0", b.must("madvise %s 0 %d", advice, 200))
	assert.Equal(t, int64(200), b.mustInt("stat"))
	assert.Equal(t, int64(200), a.mustInt("stat"))

	// Through the library the error says what happened, and the failed
	// Advise leaves what was merged merged: the 200 pages b merged before,
	// and whatever the kernel merged up to the limit (the kernel documents
	// that ENOSPC keeps it). Unadvising the Region it returned then takes
	// all of it back.
	_, err = b.call("advise 0 %d", pages)
	require.ErrorContains(t, err, "max_pages_per_process")
	assert.GreaterOrEqual(t, b.mustInt("stat"), int64(200), "a failed Advise unmerged what the kernel merged")
	b.must("unadvise")
	assert.Zero(t, b.mustInt("stat"))
	for _, w := range []*worker{a, b} {
		w.must("check")
	}

	// With room again, the same madvise goes through.
	require.NoError(t, os.WriteFile(knob, old, 0))
	require.Equal(t, "0", a.must("madvise %s 0 %d", advice, pages))
	assert.Equal(t, int64(pages), a.ksmStat("ksm_rmap_items"))
	for _, w := range []*worker{a, b} {
		w.must("check")
		w.exit()
	}
}
