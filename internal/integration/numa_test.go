//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// UPM's KSM pages are real KSM pages: the kernel migrates them (between
// NUMA nodes, for compaction, away from memory going offline) by KSM's own
// code, which moves the stable node's page under UPM's index. These tests
// move them under live processes and check that every mapping still shares
// the one page, that the content is intact, that the counters did not move,
// and that the domain's index still finds the page where it went: a new
// instance joins it.

// onlineNodes returns the guest's online NUMA nodes, failing the test when
// there are fewer than two: the rig boots two (vmtest's -numa).
func onlineNodes(t *testing.T) []int {
	t.Helper()
	b, err := os.ReadFile("/sys/devices/system/node/online")
	require.NoError(t, err, "no NUMA in this kernel (base.config has CONFIG_NUMA)")
	var nodes []int
	for _, r := range strings.Split(strings.TrimSpace(string(b)), ",") {
		lo, hi, ok := strings.Cut(r, "-")
		first, err := strconv.Atoi(lo)
		require.NoError(t, err, "%s", b)
		last := first
		if ok {
			last, err = strconv.Atoi(hi)
			require.NoError(t, err, "%s", b)
		}
		for n := first; n <= last; n++ {
			nodes = append(nodes, n)
		}
	}
	require.GreaterOrEqual(t, len(nodes), 2, "online NUMA nodes %q: vmtest boots the guest with two (-numa)", b)
	return nodes
}

// parseNodes reads a worker's "nodes" or "move" reply: pages by node (or
// by negative errno).
func parseNodes(t *testing.T, reply string) map[int]int64 {
	t.Helper()
	counts := map[int]int64{}
	for _, w := range strings.Fields(reply) {
		node, count, ok := strings.Cut(w, ":")
		require.True(t, ok, "%q", reply)
		n, err := strconv.Atoi(node)
		require.NoError(t, err, "%q", reply)
		c, err := strconv.ParseInt(count, 10, 64)
		require.NoError(t, err, "%q", reply)
		counts[n] = c
	}
	return counts
}

// frames asks a worker which page frames pages [0, n) map.
func (w *worker) frames(n int64) []uint64 {
	w.t.Helper()
	words := strings.Fields(w.must("pfns 0 %d", n))
	require.Len(w.t, words, int(n))
	pfns := make([]uint64, n)
	for i, word := range words {
		v, err := strconv.ParseUint(word, 10, 64)
		require.NoError(w.t, err)
		pfns[i] = v
	}
	return pfns
}

// differing counts the pages that map another frame in b than in a.
func differing(a, b []uint64) int64 {
	var n int64
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// checkShared checks that the workers map the same frame for every page of
// [0, shared), each of them a KSM page, and every page's content.
func checkShared(t *testing.T, shared int64, ws ...*worker) []uint64 {
	t.Helper()
	pfns := ws[0].frames(shared)
	for _, w := range ws {
		assert.Equal(t, pfns, w.frames(shared), "worker %d maps other frames than worker %d", w.cmd.Process.Pid, ws[0].cmd.Process.Pid)
		assert.Equal(t, strconv.FormatInt(shared, 10), w.must("ksmpages 0 %d", shared), "KSM pages mapped")
		assert.Equal(t, shared, w.mustInt("stat"), "ksm_merging_pages")
		w.must("check")
	}
	return pfns
}

// TestUPMPagesMigrateBetweenNodes moves the KSM pages two instances share
// to the other NUMA node with move_pages(2), then compacts memory: both
// keep sharing one page each, and a third instance joins the moved pages.
func TestUPMPagesMigrateBetweenNodes(t *testing.T) {
	upmTest(t)
	onlineNodes(t)
	shared, unique := sized(2048), sized(64)
	w0, w1 := startWorker(t), startWorker(t)
	for i, w := range []*worker{w0, w1} {
		w.must("map %d %d %d", shared, unique, 3000+i)
		require.Equal(t, "upm", w.must("advise 0 %d", shared+unique))
	}
	merged := ksmCounters{shared: shared, sharing: shared, unshared: 2 * unique}
	require.Equal(t, merged, readKSM(t))
	before := checkShared(t, shared, w0, w1)

	// To the node that holds fewer of them: at least half of them move.
	where := parseNodes(t, w0.must("nodes 0 %d", shared))
	to, from := 1, 0
	if where[0] < where[1] {
		to, from = 0, 1
	}
	require.Equal(t, shared, where[0]+where[1], "every KSM page on node 0 or 1: %v", where)
	assert.Equal(t, map[int]int64{to: shared}, parseNodes(t, w0.must("move 0 %d %d", shared, to)),
		"every KSM page moved to node %d (from %v)", to, where)
	moved := checkShared(t, shared, w0, w1)
	// (At least: kcompactd may move a page meanwhile.)
	assert.GreaterOrEqual(t, differing(before, moved), where[from], "the pages that were on node %d map new frames", from)
	assert.Equal(t, map[int]int64{to: shared}, parseNodes(t, w1.must("nodes 0 %d", shared)), "the other instance's too")
	assert.Equal(t, merged, readKSM(t), "migration changes no counter")

	// The domain's index follows the pages it holds.
	u := readUPM(t)
	w2 := startWorker(t)
	w2.must("map %d %d %d", shared, unique, 3002)
	require.Equal(t, "upm", w2.must("advise 0 %d", shared+unique))
	d := readUPM(t).sub(u)
	assert.Equal(t, shared, d.mergedStable, "a new instance joins the moved KSM pages")
	assert.Zero(t, d.mergedNew, "and makes none of its own")
	assert.Equal(t, moved, w2.frames(shared))
	merged = ksmCounters{shared: shared, sharing: 2 * shared, unshared: 3 * unique}
	assert.Equal(t, merged, readKSM(t))

	// Compaction migrates KSM pages as it finds them.
	require.NoError(t, os.WriteFile("/proc/sys/vm/compact_memory", []byte("1"), 0))
	compacted := checkShared(t, shared, w0, w1, w2)
	t.Logf("compaction moved %d of %d KSM pages", differing(moved, compacted), shared)
	assert.Equal(t, merged, readKSM(t), "compaction changes no counter")

	// And the pages still behave: a write copies, unmerge and exit clean up.
	w1.must("write 5")
	w0.must("unadvise")
	assert.Equal(t, "0", w0.must("ksmpages 0 %d", shared))
	for _, w := range []*worker{w0, w1, w2} {
		w.must("check")
		w.exit()
	}
}

// setMergeAcrossNodes sets KSM's merge_across_nodes for the test, which KSM
// allows only while it holds no KSM page, and puts 1 back after it once the
// test's processes are gone.
func setMergeAcrossNodes(t *testing.T, v string) {
	t.Helper()
	set := func(v string) error {
		return os.WriteFile(filepath.Join(ksmDir, "merge_across_nodes"), []byte(v), 0)
	}
	require.NoError(t, set(v), "merge_across_nodes=%s (KSM pages left: %s)", v, readKSM(t))
	t.Cleanup(func() {
		// The test's workers were killed just before (cleanups run last
		// first); an exiting mm may still hold KSM pages for a moment.
		eventually(t, revisitTimeout, "merge_across_nodes back to 1", func() (bool, string) {
			err := set("1")
			return err == nil, fmt.Sprintf("%v; %s", err, readKSM(t))
		})
	})
}

// TestUPMMergeAcrossNodesOff: with merge_across_nodes = 0, identical pages
// of two NUMA nodes become one KSM page a node, as ksmd makes them, and a
// joiner joins its own node's page.
func TestUPMMergeAcrossNodesOff(t *testing.T) {
	upmTest(t)
	onlineNodes(t)
	setMergeAcrossNodes(t, "0")
	shared := sized(1024)
	u := readUPM(t)
	var ws []*worker
	for i := 0; i < 4; i++ {
		node := i / 2
		w := startWorker(t)
		w.must("map %d 0 %d", shared, 3100+i)
		require.Equal(t, map[int]int64{node: shared}, parseNodes(t, w.must("move 0 %d %d", shared, node)))
		require.Equal(t, "upm", w.must("advise 0 %d", shared))
		ws = append(ws, w)
	}
	assert.Equal(t, ksmCounters{shared: 2 * shared, sharing: 2 * shared}, readKSM(t), "one KSM page a node")
	d := readUPM(t).sub(u)
	assert.Equal(t, 4*shared, d.mergedNew, "two pairs, one on each node")
	assert.Zero(t, d.mergedStable)
	node0 := checkShared(t, shared, ws[0], ws[1])
	node1 := checkShared(t, shared, ws[2], ws[3])
	assert.Equal(t, shared, differing(node0, node1), "no page shared across the nodes")
	assert.Equal(t, map[int]int64{1: shared}, parseNodes(t, ws[2].must("nodes 0 %d", shared)))

	// A fifth instance on node 1 joins node 1's pages.
	w := startWorker(t)
	w.must("map %d 0 %d", shared, 3104)
	require.Equal(t, map[int]int64{1: shared}, parseNodes(t, w.must("move 0 %d 1", shared)))
	require.Equal(t, "upm", w.must("advise 0 %d", shared))
	assert.Equal(t, node1, w.frames(shared))
	assert.Equal(t, ksmCounters{shared: 2 * shared, sharing: 3 * shared}, readKSM(t))
	for _, w := range append(ws, w) {
		w.must("check")
		w.exit()
	}
}

const memoryDir = "/sys/devices/system/memory"

// fullestBlock returns the block of blocks that holds most of the page
// frames pfns, and how many each memory block holds.
func fullestBlock(pfns []uint64, blockSize uint64, blocks []int) (int, map[int]int64) {
	perBlock := map[int]int64{}
	for _, pfn := range pfns {
		perBlock[int(pfn*pageSize/blockSize)]++
	}
	victim := blocks[0]
	for _, b := range blocks {
		if perBlock[b] > perBlock[victim] {
			victim = b
		}
	}
	return victim, perBlock
}

// movableBlocks returns the size of a memory block and the online memory
// blocks of ZONE_MOVABLE (vmtest boots with movablecore=), which can go
// offline: their pages migrate elsewhere.
func movableBlocks(t *testing.T) (uint64, []int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(memoryDir, "block_size_bytes"))
	require.NoError(t, err, "no memory hotplug in this kernel (base.config has CONFIG_MEMORY_HOTREMOVE)")
	size, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64)
	require.NoError(t, err)
	dirs, err := filepath.Glob(filepath.Join(memoryDir, "memory[0-9]*"))
	require.NoError(t, err)
	var blocks []int
	for _, dir := range dirs {
		state, err1 := os.ReadFile(filepath.Join(dir, "state"))
		zones, err2 := os.ReadFile(filepath.Join(dir, "valid_zones"))
		if err1 != nil || err2 != nil || strings.TrimSpace(string(state)) != "online" ||
			strings.TrimSpace(string(zones)) != "Movable" {
			continue
		}
		id, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "memory"))
		require.NoError(t, err)
		blocks = append(blocks, id)
	}
	require.NotEmpty(t, blocks, "no online memory block in ZONE_MOVABLE: vmtest boots with movablecore=")
	return size, blocks
}

// setBlock takes a memory block offline or brings it back online (as
// ZONE_MOVABLE); one already in that state is left as it is (the kernel
// refuses the write with EINVAL).
func setBlock(block int, state string) error {
	path := fmt.Sprintf("%s/memory%d/state", memoryDir, block)
	now, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(now)) == state {
		return nil
	}
	if state == "online" {
		state = "online_movable"
	}
	return writeKilledAfter(path, state, offlineTimeout)
}

// offlineTimeout bounds a memory block's offline: the kernel retries the
// migration of its pages until a fatal signal, so a page whose reference
// somebody leaked would make it wait forever.
var offlineTimeout = 2 * time.Minute

// writerEnv makes this test binary a process that writes one file and
// exits (runWriter).
const writerEnv = "UPM_INTEGRATION_WRITE"

func runWriter(pathValue string) int {
	path, value, _ := strings.Cut(pathValue, "=")
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// writeKilledAfter writes value to path from a process of its own, which
// it kills after timeout: a write the kernel would carry on forever (a
// memory offline) ends with a fatal signal, and the test with an error that
// names what held it up.
func writeKilledAfter(path, value string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), writerEnv+"="+path+"="+value)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		stranded, _ := strandedKSMPages()
		return fmt.Errorf("%s=%s did not end in %v (killed); KSM pages mapped by nobody: %v", path, value, timeout, stranded)
	}
	if err != nil {
		return fmt.Errorf("%s=%s: %s", path, value, strings.TrimSpace(string(out)))
	}
	return nil
}

// TestUPMMemoryOffline takes the memory block holding most of two
// instances' KSM pages offline: the pages migrate and stay shared, and a
// third instance joins them. Then blocks go offline and online in a loop
// while instances advise, unmerge and exit beside the three: UPM's exit and
// unmerge paths must wait for an offline in progress as KSM's do (under
// KASAN and DEBUG_VM, on the debug kernel, an offlined page's struct page
// is poisoned).
func TestUPMMemoryOffline(t *testing.T) {
	upmTest(t)
	blockSize, blocks := movableBlocks(t)
	t.Cleanup(func() {
		for _, b := range blocks {
			_ = setBlock(b, "online")
		}
	})
	// Not sized(): a small range can land whole in the block that
	// straddles a node's Normal and Movable zones (below).
	shared, unique := int64(2048), sized(64)
	var ws []*worker
	for i := 0; i < 2; i++ {
		w := startWorker(t)
		w.must("map %d %d %d", shared, unique, 3200+i)
		require.Equal(t, "upm", w.must("advise 0 %d", shared+unique))
		ws = append(ws, w)
	}
	merged := ksmCounters{shared: shared, sharing: shared, unshared: 2 * unique}
	before := checkShared(t, shared, ws...)

	// A block goes offline only whole and in one zone: the block where a
	// node's ZONE_MOVABLE begins is partly Normal and never does, and the
	// KSM pages can sit in it alone. Moving them to the other node (and
	// back) puts them elsewhere.
	victim, perBlock := fullestBlock(before, blockSize, blocks)
	for move := 0; perBlock[victim] == 0 && move < 4; move++ {
		ws[0].must("move 0 %d %d", shared, (move+1)%2)
		before = checkShared(t, shared, ws...)
		victim, perBlock = fullestBlock(before, blockSize, blocks)
	}
	if perBlock[victim] == 0 {
		t.Logf("no KSM page in a whole ZONE_MOVABLE block (blocks %v) after 4 moves, pages by block %v: "+
			"this run offlines blocks only in the race below", blocks, perBlock)
	} else {
		require.NoError(t, setBlock(victim, "offline"), "memory%d", victim)
		moved := checkShared(t, shared, ws...)
		assert.GreaterOrEqual(t, differing(before, moved), perBlock[victim], "the pages of memory%d moved", victim)
		for _, pfn := range moved {
			require.NotEqual(t, victim, int(pfn*pageSize/blockSize), "a KSM page left in the offline block")
		}
		assert.Equal(t, merged, readKSM(t), "offlining changes no counter")
		require.NoError(t, setBlock(victim, "online"))
	}

	u := readUPM(t)
	w := startWorker(t)
	w.must("map %d %d %d", shared, unique, 3202)
	require.Equal(t, "upm", w.must("advise 0 %d", shared+unique))
	assert.Equal(t, shared, readUPM(t).sub(u).mergedStable, "a new instance joins the moved KSM pages")
	ws = append(ws, w)
	merged = ksmCounters{shared: shared, sharing: 2 * shared, unshared: 3 * unique}
	assert.Equal(t, merged, readKSM(t))

	// Offline and online, block after block, while instances of the same
	// content come, advise, unmerge and go.
	runFor := 15 * time.Second
	if debugKernel() {
		runFor = 30 * time.Second
	}
	stop := make(chan struct{})
	type offlined struct{ done, busy int }
	result := make(chan offlined)
	go func() {
		var r offlined
		// A block that fails twice in a row holds a page that never
		// moves (firmware's, reserved at boot): it leaves the rotation
		// rather than print its page dump every round.
		failed := map[int]int{}
		for {
			for _, b := range blocks {
				select {
				case <-stop:
					result <- r
					return
				default:
				}
				if failed[b] >= 2 {
					continue
				}
				// EBUSY: a page of the block could not migrate
				// just then (held by a merge, say).
				if setBlock(b, "offline") != nil {
					r.busy++
					failed[b]++
					continue
				}
				failed[b] = 0
				r.done++
				_ = setBlock(b, "online")
			}
		}
	}()
	rounds := 0
	for deadline := time.Now().Add(runFor); time.Now().Before(deadline); rounds++ {
		a, b := startWorker(t), startWorker(t)
		for i, x := range []*worker{a, b} {
			x.must("map %d %d %d", shared/4, unique, 3300+2*rounds+i)
			x.must("advise 0 %d", shared/4+unique)
		}
		a.must("unadvise")
		for _, x := range []*worker{a, b} {
			x.must("check")
		}
		// One exits on its own, the other is killed mid-life.
		a.exit()
		require.NoError(t, b.cmd.Process.Kill())
		_ = b.cmd.Wait()
	}
	close(stop)
	r := <-result
	t.Logf("%d rounds of advise, unmerge and exit; %d blocks offlined and onlined again, %d attempts busy", rounds, r.done, r.busy)
	require.Positive(t, r.done, "no block went offline")
	for _, b := range blocks {
		require.NoError(t, setBlock(b, "online"), "memory%d", b)
	}
	checkShared(t, shared, ws...)
	assert.Equal(t, merged, readKSM(t), "only the three instances' pages are left")
	for _, w := range ws {
		w.exit()
	}
}
