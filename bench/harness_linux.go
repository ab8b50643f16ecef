// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Config is one way of deduplicating the instances' memory.
type Config struct {
	Name string
	// Backend is UPM_BACKEND in the instances, and Weights where they
	// decode their weights: "arena" (a sealed upm.Arena) or "heap" (the Go
	// heap, advised with upm.AdviseSlice).
	Backend, Weights string
	// KSM is what the bench sets KSM's knobs to; nil leaves them alone.
	KSM *ksmSettings
	// NeedsUPM skips the configuration on kernels without UPM.
	NeedsUPM bool
	// WaitKSM makes the measurement wait for ksmd to merge.
	WaitKSM bool
	// Baseline is the configuration without merging that this one's
	// saving is measured against: the same instances, the same placement
	// of their weights.
	Baseline string
}

// GuestConfigs are the configurations compared in the test guest.
var GuestConfigs = []Config{
	{Name: "none", Backend: "none", Weights: "arena", KSM: &ksmSettings{Run: 0}, Baseline: "none"},
	{Name: "ksm-default", Backend: "ksm", Weights: "arena", KSM: &ksmSettings{Run: 1, PagesToScan: 100, SleepMillisecs: 20}, WaitKSM: true, Baseline: "none"},
	{Name: "ksm-aggressive", Backend: "ksm", Weights: "arena", KSM: &ksmSettings{Run: 1, PagesToScan: 20000, SleepMillisecs: 0}, WaitKSM: true, Baseline: "none"},
	{Name: "upm", Backend: "upm", Weights: "arena", KSM: &ksmSettings{Run: 0}, NeedsUPM: true, Baseline: "none"},
	{Name: "none-heap", Backend: "none", Weights: "heap", KSM: &ksmSettings{Run: 0}, Baseline: "none-heap"},
	{Name: "upm-heap", Backend: "upm", Weights: "heap", KSM: &ksmSettings{Run: 0}, NeedsUPM: true, Baseline: "none-heap"},
}

// HostConfigs are those compared on any other host, where the bench changes
// no setting: KSM runs as it is configured, or not at all.
var HostConfigs = []Config{
	{Name: "none", Backend: "none", Weights: "arena", Baseline: "none"},
	{Name: "ksm-current", Backend: "ksm", Weights: "arena", WaitKSM: true, Baseline: "none"},
}

// Sample is the state of the instances at one moment.
type Sample struct {
	// T is the time since the first instance was started.
	T time.Duration
	// PSS is the instances' total proportional set size, CgroupMem the
	// sum of their memory.current (0 outside the guest), and Used the
	// machine's MemTotal - MemAvailable; in bytes.
	PSS, CgroupMem, Used int64
	// PagesSharing is KSM's pages_sharing.
	PagesSharing int64
}

// InstanceResult is what one instance did and held.
type InstanceResult struct {
	Name string
	// Start and Ready are when the harness started the instance and
	// received its ready line, and Merged when its ksm_merging_pages
	// first reached 95% of its final value (-1: nothing merged); all from
	// the first instance's start.
	Start, Ready, Merged time.Duration
	// MergingPages is its final ksm_merging_pages, and PSS and CgroupMem
	// its memory at the end.
	MergingPages   int64
	PSS, CgroupMem int64
	// Load is what the instance reported of its start.
	Load Ready
	// Request is the wall time of the request sent once measured.
	Request time.Duration
}

// Result is one measurement: a configuration with N instances, in one round
// of the run (-count).
type Result struct {
	Config string
	N      int
	Round  int
	// Ready is when the last instance was ready, from the first start.
	Ready time.Duration
	// Samples, every Options.Sample from the first start; Final is the
	// last, taken before the requests.
	Samples []Sample
	Final   Sample
	// UsedBefore is the machine's used memory before the instances.
	UsedBefore int64
	// DedupTime is the time from Ready to the first sample within 5% of
	// the final saving; DedupCapped says the wait hit Options.KSMWait
	// before ksmd had settled, and DedupOK that there was a saving to
	// time at all.
	DedupTime   time.Duration
	DedupOK     bool
	DedupCapped bool
	Waited      time.Duration
	// KSMDCPU is the CPU time ksmd used from the first start until
	// merging converged, and KSMDSteady its CPU seconds per second in the
	// Steady window after that (0 where ksmd does not run).
	KSMDCPU    time.Duration
	KSMDSteady float64
	// Instances are the instances, in start order.
	Instances []InstanceResult
	// Isolation says how instances were placed (cgroups, namespaces).
	Isolation string
}

// Harness starts and measures instances.
type Harness struct {
	Opts Options

	fs        procfs.FS
	cg        *cgroups
	nsFlags   uintptr
	isolation []string
	savedKSM  map[string]string
	request   *request
	progress  *progress
}

// NewHarness prepares the system for measurements: in the guest it saves
// KSM's settings and makes the cgroups.
func NewHarness(o Options) (*Harness, error) {
	if o.Function == "" {
		return nil, errors.New("no imageclass command: build it (go build ./examples/imageclass) and put it on $PATH or set UPM_BENCH_FUNCTION")
	}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, err
	}
	h := &Harness{Opts: o, fs: fs, progress: newProgress(os.Stdout)}
	if h.request, err = classifyRequest(o.Classify, o.ModelDir); err != nil {
		return nil, err
	}
	if err := loopbackUp(); err != nil {
		return nil, err
	}
	if !o.InGuest {
		h.isolation = []string{"plain processes (host: no cgroups or namespaces)"}
		return h, nil
	}
	h.savedKSM = saveKSM()
	h.cg, err = setupCgroups()
	if err != nil {
		h.isolation = append(h.isolation, "no cgroups: "+err.Error())
	} else {
		h.isolation = append(h.isolation, "cgroup v2 memory group each, one merge domain")
	}
	h.nsFlags = unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWPID
	return h, nil
}

// Close restores KSM's settings and removes the cgroups.
func (h *Harness) Close() error {
	var errs []error
	if h.savedKSM != nil {
		errs = append(errs, restoreKSM(h.savedKSM))
	}
	if h.cg != nil {
		errs = append(errs, h.cg.close())
	}
	return errors.Join(errs...)
}

// Configs returns the configurations this run compares, in their order.
func (h *Harness) Configs() []Config {
	configs := HostConfigs
	if h.Opts.InGuest {
		configs = GuestConfigs
	}
	if len(h.Opts.Configs) == 0 {
		return configs
	}
	var out []Config
	for _, c := range configs {
		if slices.Contains(h.Opts.Configs, c.Name) {
			out = append(out, c)
		}
	}
	return out
}

// Isolation describes how instances are placed.
func (h *Harness) Isolation() string { return strings.Join(h.isolation, "; ") }

// SkipReason returns why cfg cannot run here, or "".
func (h *Harness) SkipReason(cfg Config) string {
	if cfg.NeedsUPM && !hasUPM() {
		return "needs the UPM kernel (" + upmAdvice + " is absent)"
	}
	if cfg.KSM != nil && !h.Opts.InGuest {
		return "changes KSM's settings: runs only in the test guest (VMTEST_IN_GUEST=1)"
	}
	if cfg.Backend == "ksm" {
		if _, err := os.Stat(ksmDir); err != nil {
			return "needs a kernel with KSM"
		}
	}
	return ""
}

// mergeTrace is one instance's ksm_merging_pages over time.
type mergeTrace struct {
	t     []time.Duration
	pages []int64
}

// Measure runs n instances under cfg and measures them; round numbers the
// repetition, for the report.
func (h *Harness) Measure(cfg Config, n, round int) (*Result, error) {
	o := h.Opts
	label := fmt.Sprintf("round %d %s n=%d", round, cfg.Name, n)
	if cfg.KSM != nil {
		h.progress.say(label, "unmerging what the previous configuration merged (run=2)")
		if err := unmergeKSM(time.Minute); err != nil {
			return nil, err
		}
		if err := applyKSM(*cfg.KSM); err != nil {
			return nil, err
		}
	}
	res := &Result{Config: cfg.Name, N: n, Round: round}
	var err error
	if res.UsedBefore, err = usedMemory(h.fs); err != nil {
		return nil, err
	}
	cpu0 := ksmdCPU(h.fs)
	start := time.Now()

	var insts []*instance
	defer func() { h.stopAll(insts) }()
	h.progress.say(label, "starting %d instances", n)
	for i := range n {
		inst, err := h.start(cfg, fmt.Sprintf("inst-%d", i+1))
		if inst != nil {
			insts = append(insts, inst)
		}
		if err != nil {
			return nil, err
		}
	}

	// Sample memory every o.Sample and the instances' merged pages five
	// times as often, from the first start until the end.
	var (
		mu      sync.Mutex
		samples []Sample
		traces  = make([]mergeTrace, n)
		stop    = make(chan struct{})
		stopped = make(chan struct{})
	)
	sample := func() Sample {
		s := Sample{T: time.Since(start)}
		for _, inst := range insts {
			if p, err := pss(h.fs, inst.pid()); err == nil {
				s.PSS += p
			}
			if inst.cgroup != "" {
				if m, err := memoryCurrent(inst.cgroup); err == nil {
					s.CgroupMem += m
				}
			}
		}
		s.Used, _ = usedMemory(h.fs)
		s.PagesSharing = readKSMCounters().PagesSharing
		return s
	}
	traceMerged := func() {
		t := time.Since(start)
		mu.Lock()
		defer mu.Unlock()
		for i, inst := range insts {
			if p, err := mergingPages(inst.pid()); err == nil {
				traces[i].t = append(traces[i].t, t)
				traces[i].pages = append(traces[i].pages, p)
			}
		}
	}
	mergedMiB := func() float64 {
		mu.Lock()
		defer mu.Unlock()
		var pages int64
		for _, tr := range traces {
			if len(tr.pages) > 0 {
				pages += tr.pages[len(tr.pages)-1]
			}
		}
		return float64(pages) * float64(os.Getpagesize()) / mib
	}
	go func() {
		defer close(stopped)
		fast := time.NewTicker(max(o.Sample/5, 10*time.Millisecond))
		defer fast.Stop()
		next := time.Now()
		for {
			traceMerged()
			if !time.Now().Before(next) {
				s := sample()
				mu.Lock()
				samples = append(samples, s)
				mu.Unlock()
				next = next.Add(o.Sample)
			}
			select {
			case <-stop:
				return
			case <-fast.C:
			}
		}
	}()
	stopSampling := func() {
		select {
		case <-stop:
		default:
			close(stop)
			<-stopped
		}
	}
	defer stopSampling()

	// Wait for every instance to be ready.
	deadline := time.NewTimer(o.ReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	ready := make([]Ready, n)
	for i := 0; i < n; {
		select {
		case r, ok := <-insts[i].ready:
			if !ok {
				return nil, fmt.Errorf("%s: %s", insts[i].name, insts[i].failure())
			}
			insts[i].readyAt = time.Now()
			ready[i] = r
			i++
			if i == n {
				h.progress.say(label, "%d/%d ready after %.1f s; %.1f MiB merged", i, n, time.Since(start).Seconds(), mergedMiB())
			}
		case <-tick.C:
			h.progress.say(label, "%d/%d ready, %.1f MiB merged so far", i, n, mergedMiB())
		case <-deadline.C:
			return nil, fmt.Errorf("%s not ready after %v", insts[i].name, o.ReadyTimeout)
		}
	}
	res.Ready = time.Since(start)

	// Watch: every configuration for Settle; KSM until ksmd has settled
	// or KSMWait has passed.
	readyAt := time.Now()
	c0 := readKSMCounters()
	lastScan, lastSharing := c0.FullScans, c0.PagesSharing
	var scans int
	if cfg.WaitKSM {
		h.progress.say(label, "waiting for ksmd: two full scans with pages_sharing steady, at most %v", o.KSMWait)
	}
	lastSay := time.Now()
	for {
		waited := time.Since(readyAt)
		if waited >= o.Settle {
			if !cfg.WaitKSM {
				break
			}
			if waited >= o.KSMWait {
				res.DedupCapped = true
				break
			}
			// Settled: two full scans since the last instance was
			// ready, and pages_sharing steady (within 1%) since the
			// previous look, at least a full scan ago.
			c := readKSMCounters()
			if c.FullScans != lastScan {
				scans += int(c.FullScans - lastScan)
				settled := scans >= 2 && abs(c.PagesSharing-lastSharing) <= max(lastSharing/100, 16)
				lastScan, lastSharing = c.FullScans, c.PagesSharing
				if settled {
					break
				}
			}
		}
		if time.Since(lastSay) >= 5*time.Second {
			lastSay = time.Now()
			h.progress.say(label, "%.0f s after ready: %.1f MiB merged, %d full scans", waited.Seconds(), mergedMiB(), scans)
		}
		time.Sleep(min(o.Sample, 100*time.Millisecond))
	}
	res.Waited = time.Since(readyAt)
	res.KSMDCPU = ksmdCPU(h.fs) - cpu0

	// What ksmd costs once there is nothing left to merge, for as long
	// as it runs: production pays this, not the figure above.
	if cfg.KSM != nil && cfg.KSM.Run == 1 && o.Steady > 0 {
		h.progress.say(label, "converged; measuring ksmd's steady CPU for %v", o.Steady)
		c1, t1 := ksmdCPU(h.fs), time.Now()
		time.Sleep(o.Steady)
		res.KSMDSteady = (ksmdCPU(h.fs) - c1).Seconds() / time.Since(t1).Seconds()
	}
	stopSampling()

	final := sample()
	res.Final = final
	res.Samples = append(samples, final)
	for i, inst := range insts {
		ir := InstanceResult{
			Name:   inst.name,
			Start:  inst.started.Sub(start),
			Ready:  inst.readyAt.Sub(start),
			Merged: -1,
			Load:   ready[i],
		}
		ir.PSS, _ = pss(h.fs, inst.pid())
		if inst.cgroup != "" {
			ir.CgroupMem, _ = memoryCurrent(inst.cgroup)
		}
		if p, err := mergingPages(inst.pid()); err == nil {
			ir.MergingPages = p
		}
		ir.Merged = mergedAt(traces[i], ir.MergingPages)
		res.Instances = append(res.Instances, ir)
	}

	// A real request to every instance, at once, as a platform routes
	// the first requests after a scale-out; the answers are checked. It
	// comes after the memory was measured, so that its garbage does not
	// count, and it shows that merged weights still answer right.
	if h.request != nil {
		h.progress.say(label, "sending each instance a request")
		ctx, cancel := context.WithTimeout(context.Background(), o.ReadyTimeout)
		defer cancel()
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, inst := range insts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d, err := h.request.send(ctx, ready[i].Addr)
				res.Instances[i].Request = d
				if err != nil {
					errs[i] = fmt.Errorf("%s: %w", inst.name, err)
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
	}
	res.Isolation = h.Isolation()
	return res, nil
}

// mergedAt returns when trace first reached 95% of final pages, or -1 when
// nothing (under 16 pages) was merged.
func mergedAt(tr mergeTrace, final int64) time.Duration {
	if final < 16 {
		return -1
	}
	for j, p := range tr.pages {
		if p >= final-final/20 {
			return tr.t[j]
		}
	}
	return -1
}

// ComputeDedup sets DedupTime from the samples: the saving at a sample is
// base minus its memory.current (PSS outside the guest), where base is the
// same of the same instances without merging (the baseline measurement),
// or, lacking one, the figure when the last instance was ready.
func (r *Result) ComputeDedup(base int64) {
	mem := func(s Sample) int64 {
		if r.Final.CgroupMem > 0 {
			return s.CgroupMem
		}
		return s.PSS
	}
	after := []Sample{}
	for _, s := range r.Samples {
		if s.T >= r.Ready {
			after = append(after, s)
		}
	}
	if len(after) == 0 {
		return
	}
	if base <= 0 {
		base = mem(after[0])
	}
	final := base - mem(r.Final)
	// Savings under a MiB are noise: nothing to time.
	if final < 1<<20 {
		r.DedupOK = false
		return
	}
	r.DedupOK = true
	for _, s := range after {
		if base-mem(s) >= final-final/20 {
			r.DedupTime = s.T - r.Ready
			return
		}
	}
	r.DedupTime = r.Final.T - r.Ready
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// start starts one instance of the imageclass command, born in its cgroup
// and namespaces.
func (h *Harness) start(cfg Config, name string) (*instance, error) {
	inst := &instance{name: name, ready: make(chan Ready, 1), stderr: &tailBuffer{max: 4096, out: os.Stderr}}
	var cgFD = -1
	if h.cg != nil {
		dir, err := h.cg.create(name)
		if err != nil {
			return nil, err
		}
		inst.cgroup = dir
		if fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			cgFD = fd
			defer unix.Close(fd)
		}
	}

	for attempt := 0; ; attempt++ {
		cmd := exec.Command(h.Opts.Function,
			"-listen", "127.0.0.1:0",
			"-model", h.Opts.ModelDir,
			"-weights", cfg.Weights,
		)
		// The function's own defaults otherwise (GOMAXPROCS, GOGC), as
		// a user deploys it.
		cmd.Env = append(os.Environ(), "UPM_BACKEND="+cfg.Backend)
		cmd.Stderr = inst.stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: h.nsFlags, Pdeathsig: syscall.SIGKILL}
		if cgFD >= 0 {
			// CLONE_INTO_CGROUP: the instance is charged to its
			// group from its first page on.
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = cgFD
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		inst.started = time.Now()
		err = cmd.Start()
		if err != nil && attempt == 0 && (h.nsFlags != 0 || cgFD >= 0) && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)) {
			// No namespaces or no clone3 into a cgroup here: start
			// it plainly and move it into its group at once.
			h.isolation = append(h.isolation, fmt.Sprintf("namespaces and CLONE_INTO_CGROUP refused (%v): plain processes, moved into their cgroup right after start", err))
			h.nsFlags, cgFD = 0, -1
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("start %s (%s): %w", name, h.Opts.Function, err)
		}
		if attempt == 0 && h.nsFlags != 0 && !slices.Contains(h.isolation, nsNote) {
			h.isolation = append(h.isolation, nsNote)
		}
		inst.cmd = cmd
		if inst.cgroup != "" && cgFD < 0 {
			if err := addToCgroup(inst.cgroup, cmd.Process.Pid); err != nil {
				return inst, fmt.Errorf("%s: %w", name, err)
			}
		}
		go inst.readReady(stdout)
		return inst, nil
	}
}

const nsNote = "own UTS, IPC and PID namespaces"

// stopAll stops the instances and removes their cgroups.
func (h *Harness) stopAll(insts []*instance) {
	var wg sync.WaitGroup
	for _, inst := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst.stop(30 * time.Second)
		}()
	}
	wg.Wait()
	for _, inst := range insts {
		if inst.cgroup != "" && h.cg != nil {
			_ = h.cg.remove(inst.cgroup)
		}
	}
	runtime.GC()
}
