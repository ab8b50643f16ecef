//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// upmCounters is a snapshot of /sys/kernel/mm/upm.
type upmCounters struct {
	advised, mergedStable, mergedNew, skipped, candidates int64
}

func readUPM(t *testing.T) upmCounters {
	return upmCounters{
		advised:      readCounter(t, upmDir, "pages_advised"),
		mergedStable: readCounter(t, upmDir, "pages_merged_stable"),
		mergedNew:    readCounter(t, upmDir, "pages_merged_new"),
		skipped:      readCounter(t, upmDir, "pages_skipped"),
		candidates:   readCounter(t, upmDir, "candidates"),
	}
}

func (c upmCounters) sub(o upmCounters) upmCounters {
	return upmCounters{c.advised - o.advised, c.mergedStable - o.mergedStable,
		c.mergedNew - o.mergedNew, c.skipped - o.skipped, c.candidates - o.candidates}
}

// upmTest stops ksmd for the test, so that everything merged is merged by
// MADV_UPM_MERGE, and checks at the end that every KSM and UPM counter is
// back to zero once all the test's processes have exited.
func upmTest(t *testing.T) {
	t.Helper()
	requireUPM(t)
	setKSM(t, map[string]string{"run": "0"})
	require.Zero(t, readCounter(t, upmDir, "candidates"), "a previous test left candidates")
	stranded, err := strandedKSMPages()
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		defer checkNoStrandedPages(t, stranded)
		// An exited process's mm goes when its last user lets go: UPM's
		// revisit work may be looking at it that moment (it holds the
		// mm while it does), so give it a revisit's time.
		eventually(t, revisitTimeout, "nothing of UPM's left after every process exited", func() (bool, string) {
			c := readKSM(t)
			candidates, index := readCounter(t, upmDir, "candidates"), readCounter(t, upmDir, "index_bytes")
			// A merge domain lives while a KSM page, a candidate or
			// a process of its own does: none may outlive them.
			domains, _ := os.ReadFile(upmDir + "/domains")
			return c == ksmCounters{} && candidates == 0 && index == 0,
				fmt.Sprintf("KSM counters %s, UPM candidates %d, index_bytes %d; domains:\n%s", c, candidates, index, domains)
		})
	})
}

// TestUPMMergesAtOnce is the paper's case: 16 instances each advise the same
// 32 MiB plus 1 MiB of their own. With ksmd stopped, every duplicate page is
// merged when the last madvise returns.
func TestUPMMergesAtOnce(t *testing.T) {
	upmTest(t)
	const workers = 16
	shared, unique := sized(8192), sized(256)
	before := readUPM(t)

	var ws []*worker
	for i := 0; i < workers; i++ {
		w := startWorker(t)
		w.must("map %d %d %d", shared, unique, 1000+i)
		require.Equal(t, "upm", w.must("advise 0 %d", shared+unique))
		ws = append(ws, w)
	}

	// No waiting: the counters are final when the last advise returned.
	c := readKSM(t)
	assert.Equal(t, int64(shared), c.shared, "one KSM page per duplicated page: %s", c)
	assert.Equal(t, int64((workers-1)*shared), c.sharing, "%s", c)
	assert.Equal(t, int64(workers*unique), c.unshared, "unique pages wait as candidates: %s", c)
	d := readUPM(t).sub(before)
	assert.Equal(t, int64(workers*(shared+unique)), d.advised)
	assert.Equal(t, int64(2*shared), d.mergedNew, "the second instance pairs with the first")
	assert.Equal(t, int64((workers-2)*shared), d.mergedStable, "later instances join the KSM pages")
	assert.Equal(t, int64(workers*unique), d.candidates)
	assert.Zero(t, d.skipped)

	for _, w := range ws {
		assert.Equal(t, int64(shared), w.mustInt("stat"), "ksm_merging_pages")
		assert.Equal(t, int64(shared*pageSize), w.mustInt("merged"), "Region.Merged")
		w.must("check")
	}

	// A write gives the writer its own copy and leaves the others alone.
	ws[5].must("write 7")
	for _, w := range ws {
		w.must("check")
	}
	assert.Equal(t, int64((shared-1)*pageSize), ws[5].mustInt("merged"))
	assert.Equal(t, int64(shared), ws[4].mustInt("stat"))

	// Exit while others still share: their pages and data stay.
	ws[0].exit()
	ws[1].must("unmap 0 %d", shared/80)
	for _, w := range ws[1:] {
		w.must("check")
	}
	assert.Equal(t, int64(shared), ws[2].mustInt("stat"))
	for _, w := range ws[1:] {
		w.exit()
	}
}

// TestUPMBurstMergesAtOnce is TestUPMMergesAtOnce with the instances
// advising at the same moment, as a platform scaling a function out starts
// them: joining warm instances, and all new. Advisers of one domain merge
// side by side (a page joining a KSM page is replaced outside
// ksm_thread_mutex), and still every duplicate is merged, and every counter
// exact, when the last advise returns.
func TestUPMBurstMergesAtOnce(t *testing.T) {
	upmTest(t)
	const burst = 8
	shared, unique := sized(4096), sized(128)

	for _, warm := range []bool{true, false} {
		name := map[bool]string{true: "warm joiners", false: "all new"}[warm]
		before := readUPM(t)
		var ws []*worker
		// Warm: two instances made the KSM pages, and the burst joins
		// them (the path that runs outside the mutex).
		for i := 0; warm && i < 2; i++ {
			w := startWorker(t)
			w.must("map %d %d %d", shared, unique, 2000+10*i)
			require.Equal(t, "upm", w.must("advise 0 %d", shared+unique))
			ws = append(ws, w)
		}
		var burstWorkers []*worker
		for i := 0; i < burst; i++ {
			w := startWorker(t)
			w.must("map %d %d %d", shared, unique, 2001+i)
			burstWorkers = append(burstWorkers, w)
		}
		start := make(chan struct{})
		errs := make([]error, burst)
		replies := make([]string, burst)
		var wg sync.WaitGroup
		for i, w := range burstWorkers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				replies[i], errs[i] = w.call("advise 0 %d", shared+unique)
			}()
		}
		close(start)
		wg.Wait()
		for i := range burstWorkers {
			require.NoError(t, errs[i], "%s: worker %d", name, i)
			require.Equal(t, "upm", replies[i], "%s: worker %d", name, i)
		}
		ws = append(ws, burstWorkers...)

		n := int64(len(ws))
		c := readKSM(t)
		assert.Equal(t, shared, c.shared, "%s: one KSM page per duplicated page: %s", name, c)
		assert.Equal(t, (n-1)*shared, c.sharing, "%s: %s", name, c)
		assert.Equal(t, n*unique, c.unshared, "%s: unique pages wait as candidates: %s", name, c)
		d := readUPM(t).sub(before)
		assert.Equal(t, n*(shared+unique), d.advised, name)
		assert.Equal(t, 2*shared, d.mergedNew, "%s: one pair makes each KSM page", name)
		assert.Equal(t, (n-2)*shared, d.mergedStable, "%s: the others join it", name)
		assert.Equal(t, n*unique, d.candidates, name)
		assert.Zero(t, d.skipped, name)
		for _, w := range ws {
			assert.Equal(t, shared, w.mustInt("stat"), "%s: ksm_merging_pages", name)
			w.must("check")
		}
		for _, w := range ws {
			w.exit()
		}
		// The next round counts from nothing.
		eventually(t, revisitTimeout, "nothing left of the round", func() (bool, string) {
			c := readKSM(t)
			candidates := readCounter(t, upmDir, "candidates")
			return c == ksmCounters{} && candidates == 0, fmt.Sprintf("KSM counters %s, candidates %d", c, candidates)
		})
	}
}

// TestUPMUnmergeable checks that MADV_UNMERGEABLE undoes the merge at once
// and that KSM's counters follow, with ksmd stopped.
func TestUPMUnmergeable(t *testing.T) {
	upmTest(t)
	const shared = 512
	a, b := startWorker(t), startWorker(t)
	for i, w := range []*worker{a, b} {
		w.must("map %d 0 %d", shared, i)
		w.must("advise 0 %d", shared)
	}
	require.Equal(t, ksmCounters{shared: shared, sharing: shared}, readKSM(t))

	b.must("unadvise")
	assert.Equal(t, int64(0), b.mustInt("stat"))
	assert.Equal(t, int64(0), b.mustInt("ksmpages 0 %d", shared), "b's pages are private again")
	assert.Equal(t, int64(shared), a.mustInt("ksmpages 0 %d", shared), "a's pages are still KSM pages")
	// a's pages are still KSM pages, now mapped once: pages_shared counts
	// them until a unmerges or exits.
	assert.Equal(t, ksmCounters{shared: shared}, readKSM(t))
	a.must("check")
	b.must("check")

	// Advising again merges again.
	b.must("advise 0 %d", shared)
	assert.Equal(t, ksmCounters{shared: shared, sharing: shared}, readKSM(t))
	a.exit()
	b.exit()
}

// TestUPMChangedBetweenAdvises: a page written after it was advised must not
// merge with the content it had; the rest of the range still merges.
func TestUPMChangedBetweenAdvises(t *testing.T) {
	upmTest(t)
	const shared = 256
	a, b := startWorker(t), startWorker(t)
	a.must("map %d 0 1", shared)
	b.must("map %d 0 2", shared)
	a.must("advise 0 %d", shared)
	a.must("write 10") // a's page 10 is now unlike b's page 10
	b.must("advise 0 %d", shared)

	assert.Equal(t, int64(shared-1), a.mustInt("stat"))
	assert.Equal(t, int64(shared-1), b.mustInt("stat"))
	a.must("check")
	b.must("check")
	a.exit()
	b.exit()
}

// TestUPMSparseAndZero: absent pages are skipped (not populated), pages
// written with zeros merge like any other content.
func TestUPMSparseAndZero(t *testing.T) {
	upmTest(t)
	const shared = 256
	a, b := startWorker(t), startWorker(t)
	a.must("map %d 0 1 sparse", shared)
	b.must("map %d 0 2 sparse", shared)
	a.must("advise 0 %d", shared)
	b.must("advise 0 %d", shared)
	assert.Equal(t, int64(shared/2), a.mustInt("stat"), "only the present (even) pages merge")
	assert.Equal(t, int64(shared/2), b.mustInt("stat"))
	a.must("check")
	b.must("check")
	a.exit()
	b.exit()

	z1, z2 := startWorker(t), startWorker(t)
	z1.must("map %d 0 3 zero", shared)
	z2.must("map %d 0 4 zero", shared)
	z1.must("advise 0 %d", shared)
	z2.must("advise 0 %d", shared)
	// All 2*256 zero-filled pages have the same content: they share as
	// few KSM pages as max_page_sharing (mappings per KSM page) allows.
	perPage := readCounter(t, ksmDir, "max_page_sharing")
	kpages := (2*shared + perPage - 1) / perPage
	assert.Equal(t, ksmCounters{shared: kpages, sharing: 2*shared - kpages}, readKSM(t))
	z1.must("check")
	z2.must("check")
	z1.exit()
	z2.exit()
}

// TestUPMTransparentHugePages: THP-backed ranges are split and merged.
func TestUPMTransparentHugePages(t *testing.T) {
	upmTest(t)
	const shared = 1024 // 4 MiB: two huge pages
	a, b := startWorker(t), startWorker(t)
	a.must("map %d 0 1 hugepage", shared)
	b.must("map %d 0 2 hugepage", shared)
	a.must("advise 0 %d", shared)
	b.must("advise 0 %d", shared)
	assert.Equal(t, int64(shared), a.mustInt("stat"))
	assert.Equal(t, int64(shared), b.mustInt("stat"))
	a.must("check")
	b.must("check")
	a.exit()
	b.exit()
}

// TestUPMHugePageAroundAPage advises a THP that is PTE-mapped with a page of
// another folio between two runs of its subpages, as after MADV_DONTNEED
// and a refault of one subpage (or a partial copy on write), all within
// one batch of the kernel's. Every page must merge: a batch that held the
// folio once per run could not split it, and left the first run unmerged
// until the next advise (kept as candidates: pages_skipped did not count
// them, so the test counts merged pages).
func TestUPMHugePageAroundAPage(t *testing.T) {
	upmTest(t)
	const shared = 1024 // 4 MiB: two huge pages
	first, joiner := startWorker(t), startWorker(t)
	first.must("map %d 0 1 hugepage", shared)
	joiner.must("map %d 0 2 hugepage", shared)
	if n := joiner.must("thppages 0 512"); n != "512" {
		t.Skipf("the kernel backed %s of the joiner's first 512 pages with a THP, not all (memory too fragmented for a huge page): the case needs one", n)
	}
	first.must("advise 0 %d", shared)

	require.Equal(t, "0", joiner.must("madvise %d 10 1", unix.MADV_DONTNEED))
	joiner.must("fill 10 1")
	if n := joiner.must("thppages 0 512"); n != "511" {
		// The deferred-split shrinker may split a partly mapped THP
		// under memory pressure: then there is no large folio left.
		t.Skipf("after MADV_DONTNEED of one subpage, %s of 512 pages are the THP's, not 511: it was split meanwhile", n)
	}
	skipped := readCounter(t, upmDir, "pages_skipped")
	joiner.must("advise 0 %d", shared)
	assert.Equal(t, int64(0), readCounter(t, upmDir, "pages_skipped")-skipped, "pages UPM left unmerged")
	assert.Equal(t, int64(shared), joiner.mustInt("stat"), "ksm_merging_pages")
	first.must("check")
	joiner.must("check")
	first.exit()
	joiner.exit()
}

// TestUPMPinnedTwinMergesLater: a page that is pinned when its twin is
// advised cannot merge, and both wait in the index; the KSM page the next
// twin makes with one of them must take in the other. Else the stable
// tree, which every later twin searches first, hides it for good: seen
// after a swap round trip, where a fault copying the page from swap holds
// it as the pin does here.
func TestUPMPinnedTwinMergesLater(t *testing.T) {
	upmTest(t)
	const shared, pinned = 64, 8
	before := readUPM(t)
	first, busy, last := startWorker(t), startWorker(t), startWorker(t)
	for _, w := range []*worker{first, busy, last} {
		w.must("map %d 0 1", shared)
	}
	first.must("advise 0 %d", shared)
	busy.must("pin 0 %d", pinned)
	busy.must("advise 0 %d", shared)
	c := readUPM(t).sub(before)
	assert.Equal(t, int64(pinned), c.skipped, "the pinned pages are counted as skipped")
	assert.Equal(t, int64(2*pinned), c.candidates, "the pinned pages and their twins wait as candidates")
	busy.must("unpin")

	last.must("advise 0 %d", shared)
	for i, w := range []*worker{first, busy, last} {
		assert.Equal(t, int64(shared), w.mustInt("ksmpages 0 %d", shared), "worker %d: KSM pages mapped", i)
		assert.Equal(t, int64(shared), w.mustInt("stat"), "worker %d: ksm_merging_pages", i)
	}
	assert.Equal(t, ksmCounters{shared: shared, sharing: 2 * shared}, readKSM(t))
	assert.Zero(t, readUPM(t).sub(before).candidates, "candidates left")
	for _, w := range []*worker{first, busy, last} {
		w.must("check")
		w.exit()
	}
}

// TestUPMCandidateLaterInTheBatch: a process advises a page again together
// with an identical page of its own in front of it. The first meets it as a
// candidate and the two become a KSM page; the candidate's own entry, later
// in the same batch of the kernel's, must then be left as it is. Before, it
// was merged again with the page its address no longer mapped: its
// rmap_item left the KSM page, which two addresses mapped and one rmap_item
// knew, out of reach of swap and migration.
func TestUPMCandidateLaterInTheBatch(t *testing.T) {
	upmTest(t)
	w := startWorker(t)
	w.must("map 8 0 1")
	w.must("copy 0 5")
	w.must("advise 5 1")
	before := readUPM(t)
	w.must("advise 0 8")
	assert.Equal(t, int64(2), w.mustInt("ksmpages 0 8"), "KSM pages mapped")
	assert.Equal(t, int64(2), w.mustInt("stat"), "ksm_merging_pages")
	assert.Equal(t, ksmCounters{shared: 1, sharing: 1, unshared: 6}, readKSM(t))
	assert.Zero(t, readUPM(t).sub(before).skipped, "pages_skipped")
	w.must("check")
	w.exit()
}

// TestUPMErrors: the kernel's documented errnos for bad arguments, and
// nothing merged or lost on the way.
func TestUPMErrors(t *testing.T) {
	upmTest(t)
	advice := int(readCounter(t, upmDir, "advice"))
	w := startWorker(t)
	addr, err := strconv.ParseUint(w.must("map 16 0 1"), 0, 64)
	require.NoError(t, err)

	assert.Equal(t, "EINVAL", w.must("madvise-at %d %#x %d", advice, addr+1, pageSize), "misaligned start")
	assert.Equal(t, "0", w.must("madvise-at %d %#x %d", advice, addr, 0), "empty range")
	w.must("unmap 8 4")
	assert.Equal(t, "ENOMEM", w.must("madvise %d 0 16", advice), "a hole in the range")
	assert.Equal(t, "EINVAL", w.must("madvise %d 0 4", 12345), "an advice no kernel knows")
	w.must("check")

	// Shared memory is not KSM's: MADV_MERGEABLE ignores it silently,
	// MADV_UPM_MERGE says so.
	mem, err := unix.Mmap(-1, 0, 4*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	err = unix.Madvise(mem, advice)
	assert.ErrorIs(t, err, unix.EINVAL, "MAP_SHARED")
	w.exit()
}

// TestUPMCountersMatchProcesses: KSM's global counters are the sum of what
// the processes see, and unique pages are held as candidates.
func TestUPMCountersMatchProcesses(t *testing.T) {
	upmTest(t)
	const workers, shared = 3, 300
	var ws []*worker
	for i := 0; i < workers; i++ {
		w := startWorker(t)
		w.must("map %d 10 %d", shared, i+10)
		w.must("advise 0 %d", shared+10)
		ws = append(ws, w)
	}
	var merging int64
	for _, w := range ws {
		merging += w.mustInt("stat")
	}
	c := readKSM(t)
	assert.Equal(t, c.shared+c.sharing, merging, "KSM's global counters are the sum of the processes': %s", c)
	assert.Equal(t, int64(workers*10), readCounter(t, upmDir, "candidates"))
	for _, w := range ws {
		w.exit()
	}
}

// TestUPMSelftest runs the kselftest-style C test (fork, exit while shared,
// MADV_UNMERGEABLE with and without holes, errnos, no merge while ksm/run is
// 2), built by kernel/build.sh and put into the guest's /bin by the VM rig.
func TestUPMSelftest(t *testing.T) {
	upmTest(t)
	const bin = "/bin/upm_functional_tests"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s is not in this guest: kernel/build.sh builds it (make test)", bin)
	}
	// Test 9 makes a cgroup of its own on the cgroup v2 hierarchy.
	cgroupV2Root(t)
	out, err := exec.Command(bin).CombinedOutput()
	t.Logf("%s:\n%s", bin, out)
	require.NoError(t, err)
	plan := regexp.MustCompile(`(?m)^1\.\.(\d+)$`).FindStringSubmatch(string(out))
	require.NotNil(t, plan, "no TAP plan")
	require.Contains(t, string(out), "# Totals: pass:"+plan[1]+" fail:0")
}

// TestLibraryTests runs the upm package's own tests in the guest, where its
// UPM-backend tests do not skip. The VM rig puts the test binary, built with
// go test -c, into /bin.
func TestLibraryTests(t *testing.T) {
	requireGuest(t)
	const bin = "/bin/upm.test"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s is not in this guest: make test-vm builds it", bin)
	}
	args := []string{"-test.v", "-test.count=1"}
	if run := os.Getenv("UPM_LIBRARY_RUN"); run != "" {
		args = append(args, "-test.run="+run)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	t.Logf("%s:\n%s", bin, out)
	require.NoError(t, err, "the upm package's tests failed in the guest")
	require.Contains(t, string(out), "--- PASS: TestUPMMergesAcrossProcesses", "the UPM-backend tests ran")
}

// TestUPMCandidateInBusyProcess advises pages whose twins wait as candidates
// in a process that keeps its mmap_lock busy (it maps and unmaps all the
// time, as a Go runtime growing its heap does). Each must still be merged
// with its twin. (UPM used to only try the candidate's mmap_lock: on
// contention it indexed the page as a second candidate beside the first,
// and the two identical pages stayed apart.)
func TestUPMCandidateInBusyProcess(t *testing.T) {
	upmTest(t)
	pages := sized(1024)
	a, b := startWorker(t), startWorker(t)
	a.must("map %d 0 1", pages)
	a.must("advise 0 %d", pages)
	require.Equal(t, pages, readCounter(t, upmDir, "candidates"))

	a.must("hammer on")
	b.must("map %d 0 1", pages)
	before := readUPM(t)
	b.must("advise 0 %d", pages)
	d := readUPM(t).sub(before)
	a.must("hammer off")

	assert.Equal(t, 2*pages, d.mergedNew, "every page merged with its candidate twin")
	assert.Equal(t, int64(0), readCounter(t, upmDir, "candidates"), "no second candidate beside a busy one")
	assert.Equal(t, pages, b.mustInt("stat"))
	a.must("check")
	b.must("check")
	a.exit()
	b.exit()
}
