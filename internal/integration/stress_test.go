//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/procfs"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// stressBin is the C stress driver (tools/testing/selftests/mm/upm_stress.c),
// built by kernel/build.sh and put into the guest's /bin by the VM rig.
const stressBin = "/bin/upm_stress"

func requireStressBin(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(stressBin); err != nil {
		t.Skipf("%s is not in this guest: kernel/build.sh builds it (make test)", stressBin)
	}
}

func debugKernel() bool { return os.Getenv("UPM_KERNEL_FLAVOUR") == "debug" }

// stressSettings are the arguments of one upm_stress run.
type stressSettings struct {
	procs, seconds, mib int
	seed                int64
	kills               bool
}

// defaultStress is about a minute on the plain kernel; on the debug kernel,
// where KASAN makes every page visit about ten times slower, it is smaller
// and shorter, with the same ops.
func defaultStress() stressSettings {
	s := stressSettings{procs: 8, seconds: 60, mib: 16, seed: time.Now().UnixNano() % 1000000, kills: true}
	if debugKernel() {
		s.procs, s.seconds, s.mib = 4, 30, 8
	}
	return s
}

func (s stressSettings) args() []string {
	args := []string{"-p", strconv.Itoa(s.procs), "-t", strconv.Itoa(s.seconds),
		"-m", strconv.Itoa(s.mib), "-s", strconv.FormatInt(s.seed, 10)}
	if s.kills {
		args = append(args, "-k")
	}
	return args
}

// runStress runs upm_stress, in the memory cgroup dir if it is not empty,
// and returns the counts of its summary line. It fails the test on any
// corrupt byte, unexpected errno or failed process, and if nothing was
// merged (a run that merges nothing tests nothing).
func runStress(t *testing.T, s stressSettings, cgroup string) map[string]int64 {
	t.Helper()
	before := readUPM(t)
	cmd := exec.Command(stressBin, s.args()...)
	if cgroup != "" {
		dir, err := os.Open(cgroup)
		require.NoError(t, err)
		defer dir.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	}
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("%s %s (%v):\n%s", stressBin, strings.Join(s.args(), " "), time.Since(start).Round(time.Second), out)

	counts := map[string]int64{}
	for _, line := range strings.Split(string(out), "\n") {
		rest, ok := strings.CutPrefix(line, "# stress: ")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(rest) {
			k, v, _ := strings.Cut(f, "=")
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				counts[k] = n
			}
		}
	}
	require.NoError(t, err, "upm_stress failed: reproduce with %s %s", stressBin, strings.Join(s.args(), " "))
	require.NotEmpty(t, counts, "no summary line")
	assert.Zero(t, counts["corrupt"], "corrupt bytes")
	assert.Zero(t, counts["bad_errno"], "unexpected errnos")
	assert.Zero(t, counts["child_failures"]+counts["worker_failures"], "processes that failed")
	assert.Positive(t, counts["bytes_verified"])
	d := readUPM(t).sub(before)
	t.Logf("UPM during the run: pages_advised=%d pages_merged_stable=%d pages_merged_new=%d pages_skipped=%d",
		d.advised, d.mergedStable, d.mergedNew, d.skipped)
	assert.Positive(t, d.mergedStable+d.mergedNew, "the workers' pages were merged")
	return counts
}

// The stress tests run many processes that advise, write, fork, unmap,
// mprotect, discard and unmerge overlapping content, and check every byte
// they hold: with ksmd stopped, with ksmd running fast, and in a memory
// cgroup small enough that their pages are reclaimed to swap on zram. Each
// ends with every KSM and UPM counter back to zero (upmTest).

// TestUPMStressKsmdOff: everything merged is merged by MADV_UPM_MERGE.
func TestUPMStressKsmdOff(t *testing.T) {
	upmTest(t)
	requireStressBin(t)
	runStress(t, defaultStress(), "")
}

// TestUPMStressKsmdOn: the same with ksmd scanning every 10 ms.
func TestUPMStressKsmdOn(t *testing.T) {
	upmTest(t)
	requireStressBin(t)
	setKSM(t, map[string]string{"run": "1", "pages_to_scan": "1000", "sleep_millisecs": "10"})
	before := readCounter(t, ksmDir, "full_scans")
	runStress(t, defaultStress(), "")
	assert.Greater(t, readCounter(t, ksmDir, "full_scans"), before, "ksmd scanned during the run")
	// Exited processes that never advised (fork children that only
	// wrote) are ksmd's to clean up, in its next pass.
	waitKSMZero(t)
}

// TestUPMStressMemoryPressure: the workers run in a memory cgroup whose
// limit is a sixth of what they touch, with swap on zram.
func TestUPMStressMemoryPressure(t *testing.T) {
	upmTest(t)
	requireStressBin(t)
	swapOnZram(t, 512<<20)
	s := defaultStress()
	// The workers touch procs*mib, but much of it merges: a sixth of
	// it keeps them reclaiming.
	limit := max(int64(s.procs*s.mib)<<20/6, 10<<20)
	cg := memoryCgroup(t, "upmstress", limit)
	// The peak of swap in use, sampled while the workers run.
	var peak atomic.Int64
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if m, err := procfs.NewDefaultFS(); err == nil {
				if mi, err := m.Meminfo(); err == nil && mi.SwapTotal != nil && mi.SwapFree != nil {
					peak.Store(max(peak.Load(), int64(*mi.SwapTotal-*mi.SwapFree)))
				}
			}
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	runStress(t, s, cg)
	close(done)
	<-sampled
	events := readKeyed(t, filepath.Join(cg, "memory.events"))
	t.Logf("memory.max=%d memory.events: %v, swap in use at most %d kB", limit, events, peak.Load())
	assert.Positive(t, events["max"], "the group hit memory.max")
	assert.Positive(t, peak.Load(), "pages went to swap")
	assert.Zero(t, events["oom_kill"], "reclaim to swap, not OOM kills")
}

// waitKSMZero waits (ksmd running) for KSM's counters to reach zero.
func waitKSMZero(t *testing.T) {
	t.Helper()
	eventually(t, time.Minute, "KSM counters back to zero", func() (bool, string) {
		c := readKSM(t)
		return c == ksmCounters{}, c.String()
	})
}

// readKeyed reads a file of "key value" lines.
func readKeyed(t *testing.T, path string) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	m := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			m[k] = n
		}
	}
	return m
}

// swapOnZram makes a zram device of size bytes (lzo), writes a swap header
// to it (the guest has no mkswap) and swaps on it until the test ends.
func swapOnZram(t *testing.T, size int64) {
	t.Helper()
	const block = "/sys/block/zram0"
	if _, err := os.Stat(block); err != nil {
		t.Fatalf("no zram device (CONFIG_ZRAM): %v", err)
	}
	write := func(name, v string) {
		require.NoError(t, os.WriteFile(filepath.Join(block, name), []byte(v), 0), "zram0/%s", name)
	}
	write("reset", "1")
	write("comp_algorithm", "lzo")
	write("disksize", strconv.FormatInt(size, 10))
	t.Cleanup(func() { _ = os.WriteFile(filepath.Join(block, "reset"), []byte("1"), 0) })

	dev := "/dev/zram0"
	if _, err := os.Stat(dev); err != nil {
		// No devtmpfs node: make one from the device number.
		b, err := os.ReadFile(filepath.Join(block, "dev"))
		require.NoError(t, err)
		var major, minor uint32
		_, err = fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &major, &minor)
		require.NoError(t, err)
		dev = filepath.Join(t.TempDir(), "zram0")
		require.NoError(t, unix.Mknod(dev, unix.S_IFBLK|0o600, int(unix.Mkdev(major, minor))))
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.Write(swapHeader(size))
	require.NoError(t, errors.Join(err, f.Sync(), f.Close()))

	path, err := unix.BytePtrFromString(dev)
	require.NoError(t, err)
	// x/sys/unix has no Swapon wrapper.
	if _, _, e := unix.Syscall(unix.SYS_SWAPON, uintptr(unsafe.Pointer(path)), 0, 0); e != 0 {
		t.Fatalf("swapon %s: %v", dev, e)
	}
	t.Cleanup(func() {
		// swapoff reads every swapped page back in and gives up with
		// EINTR when a signal is pending, which the Go runtime's
		// preemption signals (SIGURG) make likely on a long swapoff:
		// start again, it resumes with what is left (seen in CI).
		for attempt := 1; ; attempt++ {
			_, _, e := unix.Syscall(unix.SYS_SWAPOFF, uintptr(unsafe.Pointer(path)), 0, 0)
			if e == unix.EINTR && attempt < 100 {
				continue
			}
			if e != 0 {
				t.Errorf("swapoff %s: %v (attempt %d)", dev, e, attempt)
			}
			return
		}
	})
}

// swapHeader is the first page of a swap area of size bytes, as mkswap
// writes it (include/linux/swap.h, union swap_header): version 1, the last
// usable page, no bad pages, and the magic at the end of the page.
func swapHeader(size int64) []byte {
	page := make([]byte, pageSize)
	binary.LittleEndian.PutUint32(page[1024:], 1)                       // version
	binary.LittleEndian.PutUint32(page[1028:], uint32(size/pageSize-1)) // last_page
	copy(page[pageSize-10:], "SWAPSPACE2")
	return page
}

// memoryCgroup makes a cgroup v2 group with memory.max limit under the
// hierarchy and removes it when the test ends.
func memoryCgroup(t *testing.T, name string, limit int64) string {
	t.Helper()
	root := cgroupV2Root(t)
	ctl := filepath.Join(root, "cgroup.subtree_control")
	if b, err := os.ReadFile(ctl); err != nil || !strings.Contains(" "+string(b), " memory") {
		require.NoError(t, os.WriteFile(ctl, []byte("+memory"), 0), "enable the memory controller")
	}
	dir := filepath.Join(root, name)
	_ = unix.Rmdir(dir)
	require.NoError(t, os.Mkdir(dir, 0o755))
	t.Cleanup(func() {
		var err error
		for range 100 {
			if err = unix.Rmdir(dir); err == nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Errorf("remove cgroup %s: %v", dir, err)
	})
	require.NoError(t, os.WriteFile(filepath.Join(dir, "memory.max"), []byte(strconv.FormatInt(limit, 10)), 0))
	return dir
}

// A stressHelper is upm_stress -H: one process that maps, advises and
// checks memory holding the shared patterns, on command.
type stressHelper struct {
	t       *testing.T
	cmd     *exec.Cmd
	in      io.Writer
	replies chan string
}

// startHelper starts upm_stress -H, in the cgroup dir if it is not empty.
func startHelper(t *testing.T, cgroup string) *stressHelper {
	t.Helper()
	cmd := exec.Command(stressBin, "-H", "-n", "4096")
	cmd.Stderr = os.Stderr
	if cgroup != "" {
		dir, err := os.Open(cgroup)
		require.NoError(t, err)
		defer dir.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	}
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	h := &stressHelper{t: t, cmd: cmd, in: in, replies: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.replies <- sc.Text()
		}
		close(h.replies)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return h
}

func (h *stressHelper) send(format string, args ...any) {
	h.t.Helper()
	_, err := fmt.Fprintf(h.in, format+"\n", args...)
	require.NoError(h.t, err)
}

// must sends a command and fails the test unless the answer is "ok ...".
func (h *stressHelper) must(format string, args ...any) string {
	h.t.Helper()
	h.send(format, args...)
	reply, ok := <-h.replies
	require.True(h.t, ok, "helper %d: %s: no reply", h.cmd.Process.Pid, fmt.Sprintf(format, args...))
	v, ok := strings.CutPrefix(reply, "ok")
	require.True(h.t, ok, "helper %d: %s: %s", h.cmd.Process.Pid, fmt.Sprintf(format, args...), reply)
	return strings.TrimSpace(v)
}

// exit asks the helper to end and waits for it.
func (h *stressHelper) exit() {
	h.t.Helper()
	h.send("exit")
	require.NoError(h.t, h.cmd.Wait())
}

// waitKilled waits for the helper to end and checks that SIGKILL ended it.
func (h *stressHelper) waitKilled() {
	h.t.Helper()
	err := h.cmd.Wait()
	var exit *exec.ExitError
	require.ErrorAs(h.t, err, &exit)
	ws := exit.Sys().(syscall.WaitStatus)
	require.True(h.t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "ended by %v", err)
}

// TestUPMKillMidAdvise SIGKILLs a process in the middle of a large
// MADV_UPM_MERGE whose pages merge with those of two others: the others
// keep their data and every counter returns to zero.
func TestUPMKillMidAdvise(t *testing.T) {
	upmTest(t)
	requireStressBin(t)
	others := sized(8192) / 256 // MiB
	victimMiB := sized(65536) / 256

	var hs []*stressHelper
	for range 2 {
		h := startHelper(t, "")
		h.must("map %d", others)
		h.must("advise")
		hs = append(hs, h)
	}
	require.Positive(t, readKSM(t).sharing, "the others share pages")

	victim := startHelper(t, "")
	victim.must("map %d", victimMiB)
	before := readUPM(t)
	victim.send("advise")
	total := victimMiB << 20 / pageSize
	// pages_advised grows batch by batch while the call runs.
	deadline := time.Now().Add(time.Minute)
	for readUPM(t).advised-before.advised < total/8 {
		select {
		case r := <-victim.replies:
			t.Fatalf("MADV_UPM_MERGE of %d MiB returned (%q) before it could be killed", victimMiB, r)
		default:
		}
		require.True(t, time.Now().Before(deadline), "the advise did not progress")
		time.Sleep(time.Millisecond)
	}
	killed := time.Now()
	require.NoError(t, victim.cmd.Process.Kill())
	victim.waitKilled()
	advised := readUPM(t).advised - before.advised
	t.Logf("killed after %d of %d pages advised; it was gone %v after SIGKILL",
		advised, total, time.Since(killed).Round(time.Millisecond))
	assert.Less(t, advised, total, "the kill interrupted the call")

	for _, h := range hs {
		h.must("check")
	}
	c := readKSM(t)
	t.Logf("after the kill: %s", c)
	for _, h := range hs {
		h.exit()
	}
}

// TestUPMOOMKillWhileShared OOM-kills, in a memory cgroup, a process whose
// pages the KSM pages of two others are (it advised first): the others keep
// their data and every counter returns to zero.
func TestUPMOOMKillWhileShared(t *testing.T) {
	upmTest(t)
	requireStressBin(t)
	const mib = 16
	cg := memoryCgroup(t, "upmoom", 48<<20)
	if _, err := os.Stat(filepath.Join(cg, "memory.swap.max")); err == nil {
		// No way out through swap: the limit must OOM-kill.
		require.NoError(t, os.WriteFile(filepath.Join(cg, "memory.swap.max"), []byte("0"), 0))
	}

	victim := startHelper(t, cg)
	victim.must("map %d", mib)
	victim.must("advise")
	var hs []*stressHelper
	for range 2 {
		h := startHelper(t, "")
		h.must("map %d", mib)
		h.must("advise")
		hs = append(hs, h)
	}
	c := readKSM(t)
	require.Positive(t, c.sharing, "the others' pages are merged into the victim's: %s", c)

	victim.send("hog 1024")
	victim.waitKilled()
	events := readKeyed(t, filepath.Join(cg, "memory.events"))
	t.Logf("memory.events: %v; after the OOM kill: %s", events, readKSM(t))
	require.Positive(t, events["oom_kill"], "the memcg OOM killer ended the victim")

	for _, h := range hs {
		h.must("check")
	}
	for _, h := range hs {
		h.exit()
	}
}
