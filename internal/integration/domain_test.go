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
// in two merge domains become two unrelated KSM pages, one per domain, each
// in its domain's own stable tree (no chain links them); the same pages
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
		require.NoError(t, upm.MarkMergeDomain(filepath.Join(base, tenant), t.Name()+"/"+tenant))
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
	assert.Zero(t, readCounter(t, ksmDir, "stable_node_chains"), "a stable tree per domain: no chains across domains")
	assert.Zero(t, readCounter(t, ksmDir, "stable_node_dups"))
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
			return n == shared, fmt.Sprintf("ksm_merging_pages=%d ksm_rmap_items=%d; %s; %s", n,
				w.ksmStat("ksm_rmap_items"), readKSM(t), ksmdState(t))
		})
	}
	c = readKSM(t)
	assert.Equal(t, 3*shared, c.shared, "ksmd made KSM pages of its own: %s", c)
	assert.Zero(t, readCounter(t, ksmDir, "stable_node_dups"), "ksmd's KSM pages are in KSM's own tree")
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
	// UPM's pages stay, but for the one tenant a wrote (copy on write),
	// which its other instance alone maps now.
	eventually(t, 3*time.Minute, "ksmd forgets the exited KSM-backend processes", func() (bool, string) {
		c := readKSM(t)
		return c.shared == 2*shared && c.sharing == 2*shared-1, c.String()
	})

	for _, w := range append(append(tenants["a"], tenants["b"]...), solo...) {
		w.must("check")
		w.exit()
	}
}

// limitPages sets max_pages_per_process to limit for the test and returns
// MADV_UPM_MERGE's advice number, for raw madvise calls that see the errno,
// and a function that puts the old limit back (the cleanup does it too).
func limitPages(t *testing.T, limit int) (advice string, restore func()) {
	t.Helper()
	knob := filepath.Join(upmDir, "max_pages_per_process")
	old, err := os.ReadFile(knob)
	require.NoError(t, err)
	restore = func() { require.NoError(t, os.WriteFile(knob, old, 0)) }
	t.Cleanup(func() { _ = os.WriteFile(knob, old, 0) })
	require.NoError(t, os.WriteFile(knob, []byte(strconv.Itoa(limit)), 0))
	return strconv.FormatInt(readCounter(t, upmDir, "advice"), 10), restore
}

// TestUPMPageLimitUnmapCycles is a process that advises fresh mappings and
// unmaps the old ones, as a function reloading its model does: advising ten
// times max_pages_per_process in all must never fail with ENOSPC, because
// the bookkeeping of what it unmapped goes when it reaches the limit. (ksmd
// used to free it in its next pass; it no longer walks UPM's processes, and
// with ksmd stopped nothing ever did.)
func TestUPMPageLimitUnmapCycles(t *testing.T) {
	upmTest(t)
	const pages, limit = 200, 300
	advice, _ := limitPages(t, limit)

	w := startWorker(t)
	for cycle := 0; cycle < 10*limit/pages; cycle++ {
		w.must("map %d 0 9", pages)
		require.Equal(t, "0", w.must("madvise %s 0 %d", advice, pages), "cycle %d", cycle)
		w.must("check")
		w.must("unmap 0 %d", pages)
		assert.LessOrEqual(t, w.ksmStat("ksm_rmap_items"), int64(limit), "cycle %d", cycle)
	}
	w.exit()
}

// worldReadable reads every world-readable counter of KSM's and UPM's sysfs
// directories: what any tenant can see. call_time_ns is left out: it is the
// time of everyone's calls, a clock rather than a count.
func worldReadable(t *testing.T) map[string]int64 {
	t.Helper()
	counters := map[string]int64{}
	for _, dir := range []string{ksmDir, upmDir} {
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range entries {
			info, err := e.Info()
			require.NoError(t, err)
			if info.Mode()&0o004 == 0 || e.Name() == "call_time_ns" {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			require.NoError(t, err)
			if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
				counters[filepath.Base(dir)+"/"+e.Name()] = v
			}
		}
	}
	return counters
}

// TestUPMDomainOracle is the attack merge domains exist to stop: a tenant
// advises two pages of a guessed content in its own domain and reads every
// file it can, to learn whether another domain holds that content. What it
// sees must be the same whether the victim holds the guess or not. Each
// domain has a stable tree of its own; with one shared tree, the victim's KSM
// page would become a chain beside the prober's (stable_node_chains and
// stable_node_dups grow only when the guess is right).
func TestUPMDomainOracle(t *testing.T) {
	upmTest(t)
	pages := int(sized(256))
	const secret, other = 100, 200
	root := cgroupV2Root(t)
	makeCgroups(t, root, "upmoracle/victim/0", "upmoracle/victim/1", "upmoracle/prober/0", "upmoracle/prober/1")
	base := filepath.Join(root, "upmoracle")
	for _, tenant := range []string{"victim", "prober"} {
		require.NoError(t, upm.MarkMergeDomain(filepath.Join(base, tenant), t.Name()+"/"+tenant))
	}

	// Two instances of a tenant, each in its cgroup, advise content seed.
	instances := func(tenant string, seed int) []*worker {
		var ws []*worker
		for i := 0; i < 2; i++ {
			w := startWorker(t)
			w.moveTo(filepath.Join(base, tenant, strconv.Itoa(i)))
			w.must("map 0 %d %d", pages, seed)
			require.Equal(t, "upm", w.must("advise 0 %d", pages))
			ws = append(ws, w)
		}
		return ws
	}
	victims := instances("victim", secret)
	require.Equal(t, int64(pages), victims[0].mustInt("stat"), "the victim's pages are merged")

	// probe advises the guess in two prober instances and returns what
	// every world-readable counter and the probers' own ksm_stat moved by.
	probe := func(guess int) map[string]int64 {
		before := worldReadable(t)
		probers := instances("prober", guess)
		seen := worldReadable(t)
		for k, v := range before {
			seen[k] -= v
		}
		for i, w := range probers {
			seen[fmt.Sprintf("prober%d/ksm_merging_pages", i)] = w.mustInt("stat")
			seen[fmt.Sprintf("prober%d/ksm_rmap_items", i)] = w.ksmStat("ksm_rmap_items")
			w.must("check")
			w.exit()
		}
		return seen
	}
	held, notHeld := probe(secret), probe(other)
	assert.Equal(t, int64(pages), held["ksm/pages_shared"], "the probers merged their own pages")
	assert.Equal(t, notHeld, held, "what a tenant sees must not depend on whether another domain holds its guess")
	for _, w := range victims {
		w.must("check")
		assert.Equal(t, int64(pages), w.mustInt("stat"), "the victim's pages stay merged among themselves")
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
	advice, restore := limitPages(t, limit)
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
	_, err := b.call("advise 0 %d", pages)
	require.ErrorContains(t, err, "max_pages_per_process")
	assert.GreaterOrEqual(t, b.mustInt("stat"), int64(200), "a failed Advise unmerged what the kernel merged")
	b.must("unadvise")
	assert.Zero(t, b.mustInt("stat"))
	for _, w := range []*worker{a, b} {
		w.must("check")
	}

	// With room again, the same madvise goes through.
	restore()
	require.Equal(t, "0", a.must("madvise %s 0 %d", advice, pages))
	assert.Equal(t, int64(pages), a.ksmStat("ksm_rmap_items"))
	for _, w := range []*worker{a, b} {
		w.must("check")
		w.exit()
	}
}

// domainLine finds a domain's entry in the kernel's per-domain statistics.
func domainLine(t *testing.T, domains []upm.DomainStats, name string) upm.DomainStats {
	t.Helper()
	for _, d := range domains {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no domain %q in %+v", name, domains)
	return upm.DomainStats{}
}

// TestUPMNamedDomains checks that the mark's value names the domain:
// instances in two separate subtrees marked with one name share, as a
// Kubernetes platform needs for the pods of one function; a third with
// another name shares with neither; an unmarked cgroup is a domain of its
// own, named by its cgroup ID. It reads the figures of each in the root-only
// /sys/kernel/mm/upm/domains through upm.ReadSystemStats.
func TestUPMNamedDomains(t *testing.T) {
	upmTest(t)
	shared := sized(512)
	root := cgroupV2Root(t)
	makeCgroups(t, root, "upmnamed/podA/fn", "upmnamed/podB/fn", "upmnamed/podC/fn", "upmnamed/solo")
	base := filepath.Join(root, "upmnamed")
	name, other := t.Name()+"/fn", t.Name()+"/other"
	require.NoError(t, upm.MarkMergeDomain(filepath.Join(base, "podA"), name), "a marked parent")
	require.NoError(t, upm.MarkMergeDomain(filepath.Join(base, "podB", "fn"), name), "a marked leaf elsewhere")
	require.NoError(t, upm.MarkMergeDomain(filepath.Join(base, "podC"), other))

	var ws []*worker
	for _, cg := range []string{"podA/fn", "podB/fn", "podC/fn", "solo"} {
		w := startWorker(t)
		w.moveTo(filepath.Join(base, cg))
		w.must("map %d 0 7", shared)
		require.Equal(t, "upm", w.must("advise 0 %d", shared))
		ws = append(ws, w)
	}
	assert.Equal(t, shared, ws[0].mustInt("stat"), "podA shares with podB: one name")
	assert.Equal(t, shared, ws[1].mustInt("stat"))
	assert.Zero(t, ws[2].mustInt("stat"), "podC's other name shares with nobody")
	assert.Zero(t, ws[3].mustInt("stat"), "an unmarked cgroup is its own domain")
	assert.Equal(t, 2*shared, readUPM(t).candidates, "podC and solo wait as candidates")

	st, err := upm.ReadSystemStats()
	require.NoError(t, err)
	require.True(t, st.UPM.DomainsReadable, "root reads the domains file")
	d := domainLine(t, st.UPM.Domains, name)
	assert.Equal(t, upm.DomainStats{Name: name, Processes: 2, PagesShared: uint64(shared), PagesSharing: uint64(shared), IndexBytes: d.IndexBytes}, d)
	o := domainLine(t, st.UPM.Domains, other)
	assert.Equal(t, uint64(1), o.Processes)
	assert.Equal(t, uint64(shared), o.Candidates)
	assert.Zero(t, o.PagesShared)
	var solo []upm.DomainStats
	for _, d := range st.UPM.Domains {
		if d.Name == "" && d.Candidates == uint64(shared) && d.Processes == 1 {
			solo = append(solo, d)
		}
	}
	require.Len(t, solo, 1, "the unmarked cgroup's domain: %+v", st.UPM.Domains)
	var cg unix.Stat_t
	require.NoError(t, unix.Stat(filepath.Join(base, "solo"), &cg))
	assert.Equal(t, cg.Ino, solo[0].CgroupID, "an unnamed domain is its cgroup's ID, the directory's inode number")

	// Domain names are tenants' data: root only.
	info, err := os.Stat(filepath.Join(upmDir, "domains"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o400), info.Mode().Perm())

	// Renaming podC's domain moves its next advise: it joins the others.
	require.NoError(t, upm.MarkMergeDomain(filepath.Join(base, "podC"), name))
	require.Equal(t, "upm", ws[2].must("advise 0 %d", shared))
	assert.Equal(t, shared, ws[2].mustInt("stat"), "podC merges into the named domain's pages")
	for _, w := range ws {
		w.must("check")
		w.exit()
	}
}
