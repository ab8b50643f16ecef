// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/upm-project/upm"
)

// ksmDir is KSM's sysfs directory; tests point it elsewhere.
var ksmDir = "/sys/kernel/mm/ksm"

const (
	upmAdvice    = "/sys/kernel/mm/upm/advice"
	cgroupRoot   = "/sys/fs/cgroup"
	cgroupParent = "upmbench"
)

// --- KSM ------------------------------------------------------------------

// ksmSettings are the KSM knobs a configuration sets.
type ksmSettings struct {
	Run            int
	PagesToScan    int
	SleepMillisecs int
}

// ksmKnobs are the files saveKSM saves and restoreKSM restores.
var ksmKnobs = []string{"run", "pages_to_scan", "sleep_millisecs", "advisor_mode"}

func readKSM(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(ksmDir, name))
	return strings.TrimSpace(string(b)), err
}

func readKSMInt(name string) (int64, error) {
	s, err := readKSM(name)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(s, 10, 64)
}

func writeKSM(name, value string) error {
	if err := os.WriteFile(filepath.Join(ksmDir, name), []byte(value), 0); err != nil {
		return fmt.Errorf("set ksm %s to %s: %w", name, value, err)
	}
	return nil
}

// saveKSM returns the current values of ksmKnobs that exist.
func saveKSM() map[string]string {
	saved := make(map[string]string)
	for _, k := range ksmKnobs {
		if v, err := readKSM(k); err == nil {
			saved[k] = v
		}
	}
	return saved
}

// restoreKSM sets the knobs back; run last, so ksmd restarts with its
// settings in place.
func restoreKSM(saved map[string]string) error {
	var errs []error
	for _, k := range ksmKnobs {
		if v, ok := saved[k]; ok && k != "run" {
			if k == "advisor_mode" {
				// The file shows "[none] scan-time"; write the
				// bracketed choice.
				if i, j := strings.Index(v, "["), strings.Index(v, "]"); i >= 0 && j > i {
					v = v[i+1 : j]
				}
			}
			errs = append(errs, writeKSM(k, v))
		}
	}
	if v, ok := saved["run"]; ok {
		errs = append(errs, writeKSM("run", v))
	}
	return errors.Join(errs...)
}

// applyKSM sets s. The scan-time advisor (Linux 6.9+) would override
// pages_to_scan, so it is switched off.
func applyKSM(s ksmSettings) error {
	if _, err := readKSM("advisor_mode"); err == nil {
		if err := writeKSM("advisor_mode", "none"); err != nil {
			return err
		}
	}
	if s.Run == 1 {
		if err := writeKSM("pages_to_scan", strconv.Itoa(s.PagesToScan)); err != nil {
			return err
		}
		if err := writeKSM("sleep_millisecs", strconv.Itoa(s.SleepMillisecs)); err != nil {
			return err
		}
	}
	return writeKSM("run", strconv.Itoa(s.Run))
}

// unmergeKSM has ksmd unmerge every merged page (run=2) and waits until none
// is left, then stops it.
func unmergeKSM(timeout time.Duration) error {
	if err := writeKSM("run", "2"); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		shared, err1 := readKSMInt("pages_shared")
		sharing, err2 := readKSMInt("pages_sharing")
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		if shared == 0 && sharing == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ksm still has %d shared pages %v after run=2", shared, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return writeKSM("run", "0")
}

// ksmCounters are the KSM counters sampled during a measurement.
type ksmCounters struct {
	PagesSharing int64
	FullScans    int64
}

func readKSMCounters() ksmCounters {
	var c ksmCounters
	c.PagesSharing, _ = readKSMInt("pages_sharing")
	c.FullScans, _ = readKSMInt("full_scans")
	return c
}

// ksmdCPU returns the CPU time (user and system) that the ksmd kernel thread
// has used, or 0 if there is no ksmd.
func ksmdCPU(fs procfs.FS) time.Duration {
	procs, err := fs.AllProcs()
	if err != nil {
		return 0
	}
	for _, p := range procs {
		if comm, err := p.Comm(); err == nil && comm == "ksmd" {
			if st, err := p.Stat(); err == nil {
				return time.Duration(st.CPUTime() * float64(time.Second))
			}
		}
	}
	return 0
}

// tlbShootdowns returns the TLB-shootdown interrupts all CPUs have taken
// so far (the "TLB" line of /proc/interrupts, x86): the IPIs that a change
// to the page tables of a process that ran on other CPUs costs, such as
// each ptep_clear_flush() of a merge. ok is false where there is no count.
func tlbShootdowns() (n int64, ok bool) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, false
	}
	self, err := fs.Self()
	if err != nil {
		return 0, false
	}
	irqs, err := self.Interrupts()
	if err != nil {
		return 0, false
	}
	tlb, ok := irqs["TLB"]
	if !ok {
		return 0, false
	}
	for _, v := range tlb.Values {
		c, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, false
		}
		n += c
	}
	return n, true
}

// tlbDelta counts TLB-shootdown interrupts from now until the returned
// function is called, which gives them per page, or NaN with no count.
func tlbDelta() func(pages float64) float64 {
	before, ok := tlbShootdowns()
	return func(pages float64) float64 {
		after, ok2 := tlbShootdowns()
		if !ok || !ok2 || pages == 0 {
			return math.NaN()
		}
		return float64(after-before) / pages
	}
}

// mergingPages returns ksm_merging_pages of process pid from
// /proc/PID/ksm_stat: its pages that are KSM pages, which UPM's merges make
// too. It costs the kernel a few counter reads, unlike smaps.
func mergingPages(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/ksm_stat", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ksm_merging_pages "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/ksm_stat has no ksm_merging_pages", pid)
}

// loopbackUp brings the loopback interface up, as a container runtime does
// in every network namespace: the instances serve HTTP on 127.0.0.1, and the
// guest's init leaves lo down.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: %w (a kernel without CONFIG_INET?)", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if ifr.Uint16()&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}

// hasUPM reports whether the kernel has UPM.
func hasUPM() bool {
	_, err := os.Stat(upmAdvice)
	return err == nil
}

// --- memory -------------------------------------------------------------------

// usedMemory returns MemTotal - MemAvailable from /proc/meminfo, in bytes.
func usedMemory(fs procfs.FS) (int64, error) {
	mi, err := fs.Meminfo()
	if err != nil {
		return 0, err
	}
	if mi.MemTotalBytes == nil || mi.MemAvailableBytes == nil {
		return 0, errors.New("/proc/meminfo lacks MemTotal or MemAvailable")
	}
	return int64(*mi.MemTotalBytes) - int64(*mi.MemAvailableBytes), nil
}

// pss returns the proportional set size of process pid, in bytes.
func pss(fs procfs.FS, pid int) (int64, error) {
	p, err := fs.Proc(pid)
	if err != nil {
		return 0, err
	}
	r, err := p.ProcSMapsRollup()
	if err != nil {
		return 0, err
	}
	return int64(r.Pss), nil
}

// --- cgroups ------------------------------------------------------------------

// cgroups places instances in cgroup v2 memory groups under
// /sys/fs/cgroup/upmbench.
type cgroups struct {
	parent string
}

// setupCgroups finds the cgroup v2 hierarchy, mounting it at /sys/fs/cgroup
// if nothing is mounted there (or at /sys/fs/cgroup/unified beside a cgroup
// v1 layout), and makes the parent group with the memory controller enabled
// for its children. It fails if a cgroup v1 hierarchy holds the memory
// controller.
func setupCgroups() (*cgroups, error) {
	root := cgroupRoot
	switch {
	case isCgroup2(root):
	case isCgroup2(filepath.Join(root, "unified")):
		root = filepath.Join(root, "unified")
	case isMountPoint(root):
		// A cgroup v1 layout (u-root's init mounts one, on a tmpfs):
		// mount cgroup2 beside it, as systemd's hybrid mode does. If
		// v1 holds the memory controller, enabling it below fails.
		unified := filepath.Join(root, "unified")
		if err := os.MkdirAll(unified, 0o755); err != nil {
			return nil, fmt.Errorf("%s holds a cgroup v1 hierarchy: %w", root, err)
		}
		if err := unix.Mount("cgroup2", unified, "cgroup2", 0, ""); err != nil {
			return nil, fmt.Errorf("%s holds a cgroup v1 hierarchy; mount cgroup2 at %s: %w", root, unified, err)
		}
		root = unified
	default:
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, err
		}
		if err := unix.Mount("cgroup2", root, "cgroup2", 0, ""); err != nil {
			return nil, fmt.Errorf("mount cgroup2 at %s: %w", root, err)
		}
	}
	if err := enableMemory(root); err != nil {
		return nil, err
	}
	parent := filepath.Join(root, cgroupParent)
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	if err := enableMemory(parent); err != nil {
		return nil, err
	}
	// All instances run the same function: one merge domain, as a
	// platform would mark it. Without the mark the UPM kernel would keep
	// each instance's cgroup to itself.
	if err := upm.MarkMergeDomain(parent, "upm-bench/imageclass"); err != nil {
		return nil, err
	}
	return &cgroups{parent: parent}, nil
}

func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// isMountPoint reports whether something is mounted at dir.
func isMountPoint(dir string) bool {
	var st, up unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(dir), &up) != nil {
		return false
	}
	return st.Dev != up.Dev
}

func enableMemory(dir string) error {
	ctl := filepath.Join(dir, "cgroup.subtree_control")
	b, err := os.ReadFile(ctl)
	if err == nil && strings.Contains(" "+string(b), " memory") {
		return nil
	}
	if err := os.WriteFile(ctl, []byte("+memory"), 0); err != nil {
		return fmt.Errorf("enable the memory controller in %s: %w", dir, err)
	}
	return nil
}

// create makes the group of one instance, removing a stale one.
func (c *cgroups) create(name string) (string, error) {
	dir := filepath.Join(c.parent, name)
	_ = unix.Rmdir(dir)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	return dir, nil
}

// remove removes a group, waiting a little for its processes to be gone.
func (c *cgroups) remove(dir string) error {
	var err error
	for range 50 {
		if err = unix.Rmdir(dir); err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

func (c *cgroups) close() error {
	return c.remove(c.parent)
}

// memoryCurrent returns memory.current of the group dir, in bytes.
func memoryCurrent(dir string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, "memory.current"))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// addToCgroup moves pid into the group dir.
func addToCgroup(dir string, pid int) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
}
