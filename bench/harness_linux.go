// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
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
	// Backend is UPM_BACKEND in the instances.
	Backend string
	// KSM is what the bench sets KSM's knobs to; nil leaves them alone.
	KSM *ksmSettings
	// NeedsUPM skips the configuration on kernels without UPM.
	NeedsUPM bool
	// WaitKSM makes the measurement wait for ksmd to merge.
	WaitKSM bool
}

// GuestConfigs are the configurations compared in the test guest, in the
// order they run: "none" first, as the others' savings are relative to it.
var GuestConfigs = []Config{
	{Name: "none", Backend: "none", KSM: &ksmSettings{Run: 0}},
	{Name: "ksm-default", Backend: "ksm", KSM: &ksmSettings{Run: 1, PagesToScan: 100, SleepMillisecs: 20}, WaitKSM: true},
	{Name: "ksm-aggressive", Backend: "ksm", KSM: &ksmSettings{Run: 1, PagesToScan: 20000, SleepMillisecs: 0}, WaitKSM: true},
	{Name: "upm", Backend: "upm", KSM: &ksmSettings{Run: 0}, NeedsUPM: true},
}

// HostConfigs are those compared on any other host, where the bench changes
// no setting: KSM runs as it is configured, or not at all.
var HostConfigs = []Config{
	{Name: "none", Backend: "none"},
	{Name: "ksm-current", Backend: "ksm", WaitKSM: true},
}

// Options tune a run; OptionsFromEnv reads them from the environment.
type Options struct {
	// InGuest is set in the test guest (VMTEST_IN_GUEST=1): the bench may
	// change KSM's settings and make cgroups and namespaces.
	InGuest bool
	// ModelDir holds the imageclass models (UPM_MODEL_DIR).
	ModelDir string
	// ResultsDir receives results.md, results.csv and the plots
	// (UPM_RESULTS_DIR).
	ResultsDir string
	// N are the instance counts (UPM_BENCH_N, "1,2,4,8,16").
	N []int
	// KSMWait caps the wait for ksmd to merge (UPM_BENCH_KSM_WAIT).
	KSMWait time.Duration
	// Settle is how long every configuration is watched after the last
	// instance is ready, at least (UPM_BENCH_SETTLE).
	Settle time.Duration
	// Sample is the sampling period (UPM_BENCH_SAMPLE).
	Sample time.Duration
	// ReadyTimeout bounds the wait for the instances to be ready
	// (UPM_BENCH_READY_TIMEOUT).
	ReadyTimeout time.Duration
	// Budget is the memory the density factor fills with instances
	// (UPM_BENCH_BUDGET_MIB, in MiB).
	Budget int64
}

// OptionsFromEnv returns the options of the environment; pkgDir is the
// bench package's directory, from which the model directory defaults to
// ../build/model.
func OptionsFromEnv(pkgDir string) (Options, error) {
	o := Options{
		InGuest:      os.Getenv("VMTEST_IN_GUEST") != "",
		ModelDir:     os.Getenv("UPM_MODEL_DIR"),
		ResultsDir:   os.Getenv("UPM_RESULTS_DIR"),
		N:            []int{1, 2, 4, 8, 16},
		KSMWait:      120 * time.Second,
		Settle:       2 * time.Second,
		Sample:       250 * time.Millisecond,
		ReadyTimeout: 10 * time.Minute,
		Budget:       1 << 30,
	}
	if !o.InGuest {
		// Keep runs on a shared host short.
		o.N = []int{1, 4}
		o.KSMWait = 5 * time.Second
	}
	if o.ModelDir == "" {
		o.ModelDir = filepath.Join(pkgDir, "..", "build", "model")
	}
	if o.ResultsDir == "" {
		o.ResultsDir = filepath.Join(pkgDir, "..", "build", "bench-results")
	}
	var errs []error
	if v := os.Getenv("UPM_BENCH_N"); v != "" {
		n, err := parseCounts(v)
		errs = append(errs, err)
		o.N = n
	}
	for _, d := range []struct {
		env string
		to  *time.Duration
	}{
		{"UPM_BENCH_KSM_WAIT", &o.KSMWait},
		{"UPM_BENCH_SETTLE", &o.Settle},
		{"UPM_BENCH_SAMPLE", &o.Sample},
		{"UPM_BENCH_READY_TIMEOUT", &o.ReadyTimeout},
	} {
		if v := os.Getenv(d.env); v != "" {
			t, err := time.ParseDuration(v)
			if err == nil && t < 0 {
				err = errors.New("negative")
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", d.env, v, err))
			}
			*d.to = t
		}
	}
	if o.Sample <= 0 {
		errs = append(errs, errors.New("UPM_BENCH_SAMPLE must be positive"))
	}
	if v := os.Getenv("UPM_BENCH_BUDGET_MIB"); v != "" {
		mib, err := strconv.ParseInt(v, 10, 64)
		if err != nil || mib <= 0 {
			errs = append(errs, fmt.Errorf("UPM_BENCH_BUDGET_MIB=%q: want a positive number of MiB", v))
		}
		o.Budget = mib << 20
	}
	return o, errors.Join(errs...)
}

// parseCounts parses "1,2,4" into sorted, distinct positive counts.
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("UPM_BENCH_N=%q: %q is not a positive count", s, f)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
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

// Result is one measurement: a configuration with N instances.
type Result struct {
	Config string
	N      int
	// Started is when the first instance was started, and Ready when the
	// last was ready, as offsets from the first start.
	Ready time.Duration
	// Samples, every Options.Sample from the first start.
	Samples []Sample
	// Final is the last sample.
	Final Sample
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
	// KSMDCPU is the CPU time ksmd used from the first start to the end,
	// and AdviseSys the instances' system CPU time in their advise calls.
	KSMDCPU   time.Duration
	AdviseSys time.Duration
	// AdviseTimes are the instances' advise wall times, and Advised the
	// bytes each advised.
	AdviseTimes []time.Duration
	Advised     int64
	// Instances are the instances' ready records, and InstancePSS and
	// InstanceCgroupMem their PSS and memory.current at the end.
	Instances         []Ready
	InstancePSS       []int64
	InstanceCgroupMem []int64
	// Isolation says how instances were placed (cgroups, namespaces).
	Isolation string
}

// instance is a running instance process.
type instance struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	ready  chan Ready
	cgroup string
}

// Harness starts and measures instances.
type Harness struct {
	Opts Options
	// Exe is the program that runs as an instance with InstanceEnv set:
	// the test binary.
	Exe string

	fs        procfs.FS
	cg        *cgroups
	nsFlags   uintptr
	isolation []string
	savedKSM  map[string]string
	tmp       string
	face      string
}

// NewHarness prepares the system for measurements: in the guest it saves
// KSM's settings and makes the cgroups.
func NewHarness(o Options, exe string) (*Harness, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, err
	}
	h := &Harness{Opts: o, Exe: exe, fs: fs}
	if h.tmp, err = os.MkdirTemp("", "upmbench-"); err != nil {
		return nil, err
	}
	if h.face, err = writeSampleFace(o.ModelDir, h.tmp); err != nil {
		os.RemoveAll(h.tmp)
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
		h.isolation = append(h.isolation, "cgroup v2 memory group each")
	}
	h.nsFlags = unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWPID
	return h, nil
}

// Close restores KSM's settings and removes the cgroups.
func (h *Harness) Close() error {
	errs := []error{os.RemoveAll(h.tmp)}
	if h.savedKSM != nil {
		errs = append(errs, restoreKSM(h.savedKSM))
	}
	if h.cg != nil {
		errs = append(errs, h.cg.close())
	}
	return errors.Join(errs...)
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

// Measure runs n instances under cfg and measures them.
func (h *Harness) Measure(cfg Config, n int) (*Result, error) {
	o := h.Opts
	if cfg.KSM != nil {
		if err := unmergeKSM(time.Minute); err != nil {
			return nil, err
		}
		if err := applyKSM(*cfg.KSM); err != nil {
			return nil, err
		}
	}
	res := &Result{Config: cfg.Name, N: n}
	var err error
	if res.UsedBefore, err = usedMemory(h.fs); err != nil {
		return nil, err
	}
	cpu0 := ksmdCPU(h.fs)
	start := time.Now()

	var insts []*instance
	defer func() {
		h.stopAll(insts)
	}()
	for i := range n {
		inst, err := h.start(cfg, fmt.Sprintf("inst-%d", i+1))
		if err != nil {
			return nil, err
		}
		insts = append(insts, inst)
	}

	// Sample from the first start until the end.
	var (
		mu      sync.Mutex
		samples []Sample
		stop    = make(chan struct{})
		stopped = make(chan struct{})
	)
	sample := func() Sample {
		s := Sample{T: time.Since(start)}
		for _, inst := range insts {
			if p, err := pss(h.fs, inst.cmd.Process.Pid); err == nil {
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
	go func() {
		defer close(stopped)
		t := time.NewTicker(o.Sample)
		defer t.Stop()
		for {
			s := sample()
			mu.Lock()
			samples = append(samples, s)
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
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
	deadline := time.After(o.ReadyTimeout)
	for _, inst := range insts {
		select {
		case r, ok := <-inst.ready:
			if !ok || !r.Ready {
				return nil, fmt.Errorf("%s: %s", inst.name, instanceFailure(inst, r))
			}
			res.Instances = append(res.Instances, r)
		case <-deadline:
			return nil, fmt.Errorf("%s not ready after %v", inst.name, o.ReadyTimeout)
		}
	}
	res.Ready = time.Since(start)

	// Watch: every configuration for Settle; KSM until ksmd has settled
	// or KSMWait has passed.
	readyAt := time.Now()
	c0 := readKSMCounters()
	lastScan, lastSharing := c0.FullScans, c0.PagesSharing
	var scans int
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
		time.Sleep(min(o.Sample, 100*time.Millisecond))
	}
	res.Waited = time.Since(readyAt)
	stopSampling()
	for _, inst := range insts {
		p, _ := pss(h.fs, inst.cmd.Process.Pid)
		var m int64
		if inst.cgroup != "" {
			m, _ = memoryCurrent(inst.cgroup)
		}
		res.InstancePSS = append(res.InstancePSS, p)
		res.InstanceCgroupMem = append(res.InstanceCgroupMem, m)
	}
	final := sample()
	samples = append(samples, final)
	res.Samples = samples
	res.Final = final
	res.KSMDCPU = ksmdCPU(h.fs) - cpu0
	for _, r := range res.Instances {
		res.AdviseSys += r.AdviseSysTime
		res.AdviseTimes = append(res.AdviseTimes, r.AdviseTime)
		res.Advised = r.AdvisedBytes
	}
	res.Isolation = h.Isolation()
	return res, nil
}

// ComputeDedup sets DedupTime from the samples: the saving at a sample is
// base minus its PSS, where base is the PSS of the same instances without
// merging (the "none" measurement), or, lacking one, the PSS when the last
// instance was ready.
func (r *Result) ComputeDedup(base int64) {
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
		base = after[0].PSS
	}
	final := base - r.Final.PSS
	// Savings under a few pages are noise: nothing to time.
	if final < 1<<20 {
		r.DedupOK = false
		return
	}
	r.DedupOK = true
	for _, s := range after {
		if base-s.PSS >= final-final/20 {
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

// start starts one instance, placed in its cgroup and namespaces, and lets
// it load.
func (h *Harness) start(cfg Config, name string) (*instance, error) {
	inst := &instance{name: name, ready: make(chan Ready, 1)}
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
		cmd := exec.Command(h.Exe, "-test.run=^$", "-test.bench=^$")
		cmd.Env = append(os.Environ(),
			InstanceEnv+"="+name,
			"UPM_BACKEND="+cfg.Backend,
			"UPM_MODEL_DIR="+h.Opts.ModelDir,
			FaceEnv+"="+h.face,
			// A serverless instance has a CPU or so to itself.
			"GOMAXPROCS=1",
		)
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: h.nsFlags, Pdeathsig: syscall.SIGKILL}
		if cgFD >= 0 {
			// CLONE_INTO_CGROUP: the instance is charged to its
			// group from its first page on.
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = cgFD
		}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		err = cmd.Start()
		if err != nil && attempt == 0 && (h.nsFlags != 0 || cgFD >= 0) && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)) {
			// No namespaces or no clone3 into a cgroup here: start
			// it plainly and move it into its group before it loads.
			h.isolation = append(h.isolation, fmt.Sprintf("namespaces and CLONE_INTO_CGROUP refused (%v): plain processes, moved into their cgroup before loading", err))
			h.nsFlags, cgFD = 0, -1
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		if attempt == 0 && h.nsFlags != 0 && !slices.Contains(h.isolation, nsNote) {
			h.isolation = append(h.isolation, nsNote)
		}
		inst.cmd, inst.stdin = cmd, stdin
		if inst.cgroup != "" && cgFD < 0 {
			if err := addToCgroup(inst.cgroup, cmd.Process.Pid); err != nil {
				return inst, fmt.Errorf("%s: %w", name, err)
			}
		}
		go func() {
			defer close(inst.ready)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				var r Ready
				if json.Unmarshal(sc.Bytes(), &r) == nil && (r.Ready || r.Error != "") {
					inst.ready <- r
					_, _ = io.Copy(io.Discard, stdout)
					return
				}
			}
		}()
		// Placed: let it load.
		if _, err := io.WriteString(stdin, "go\n"); err != nil {
			return inst, fmt.Errorf("%s: %w", name, err)
		}
		return inst, nil
	}
}

const nsNote = "own UTS, IPC and PID namespaces"

func instanceFailure(inst *instance, r Ready) string {
	if r.Error != "" {
		return r.Error
	}
	return "exited before it was ready (see its stderr above)"
}

// stopAll closes the instances' stdin, which ends them, and removes their
// cgroups.
func (h *Harness) stopAll(insts []*instance) {
	for _, inst := range insts {
		if inst.stdin != nil {
			inst.stdin.Close()
		}
	}
	for _, inst := range insts {
		if inst.cmd == nil {
			continue
		}
		done := make(chan struct{})
		go func() {
			_ = inst.cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = inst.cmd.Process.Kill()
			<-done
		}
		if inst.cgroup != "" && h.cg != nil {
			_ = h.cg.remove(inst.cgroup)
		}
	}
	runtime.GC()
}
