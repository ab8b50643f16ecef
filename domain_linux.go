// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// upmAdvicePath is where the kernel says it has UPM; tests move it.
var upmAdvicePath = sysUPMAdvice

func sysMarkMergeDomain(dir, name string) error {
	if err := checkCgroup2(dir); err != nil {
		return err
	}
	// Only a UPM kernel reads the mark. Setting it elsewhere would succeed
	// and do nothing, and the caller would believe instances now share.
	if _, err := readAdvice(upmAdvicePath); err != nil && conclusive(err) {
		return fmt.Errorf("upm: mark %s as a merge domain: the kernel has no UPM (%v), so nothing would honour the mark: %w", dir, err, ErrUnsupported)
	}
	if err := unix.Setxattr(dir, MergeDomainXattr, []byte(name), 0); err != nil {
		return fmt.Errorf("upm: mark %s as merge domain %q: %w", dir, name, err)
	}
	return nil
}

func sysUnmarkMergeDomain(dir string) error {
	if err := checkCgroup2(dir); err != nil {
		return err
	}
	if err := unix.Removexattr(dir, MergeDomainXattr); err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("upm: unmark merge domain %s: %w", dir, err)
	}
	return nil
}

// checkCgroup2 refuses anything but a cgroup v2 directory: the kernel looks
// for the mark on the default hierarchy only, so a mark elsewhere would be
// silently ignored.
func checkCgroup2(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("upm: merge domain %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("upm: merge domain %s: not a cgroup v2 directory", dir)
	}
	return nil
}

// Where the cgroup v2 hierarchy usually is, and this process's place in it.
const (
	sysCgroupRoot  = "/sys/fs/cgroup"
	procSelfCgroup = "/proc/self/cgroup"
)

// CgroupV2Root returns where the cgroup v2 hierarchy is mounted:
// /sys/fs/cgroup on systems with the unified hierarchy, else the first
// cgroup2 mount in /proc/self/mountinfo (such as /sys/fs/cgroup/unified
// beside a cgroup v1 layout), else /sys/fs/cgroup.
func CgroupV2Root() string {
	var st unix.Statfs_t
	if unix.Statfs(sysCgroupRoot, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return sysCgroupRoot
	}
	mounts, err := procfs.GetMounts()
	if err == nil {
		for _, m := range mounts {
			if m.FSType == "cgroup2" {
				return m.MountPoint
			}
		}
	}
	return sysCgroupRoot
}

func sysMergeDomainOf(pid int) (MergeDomain, error) {
	file := fmt.Sprintf("/proc/%d/cgroup", pid)
	if _, err := os.Stat(file); err != nil {
		return MergeDomain{Processes: -1}, fmt.Errorf("upm: merge domain of process %d: %w", pid, err)
	}
	return readMergeDomain(CgroupV2Root(), file), nil
}

// readMergeDomain finds this process's merge domain under the cgroup v2
// hierarchy mounted at root, from its cgroup file (/proc/self/cgroup), and
// counts the processes in it.
func readMergeDomain(root, cgroupFile string) MergeDomain {
	d := MergeDomain{Processes: -1}
	data, err := os.ReadFile(cgroupFile)
	if err != nil {
		return d
	}
	var rel string
	found := false
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			rel, found = p, true
			break
		}
	}
	if !found {
		return d // cgroup v1 only: UPM's domains are on v2.
	}
	own := filepath.Join(root, filepath.Clean("/"+rel))
	d.Cgroup = own
	// trusted.* attributes read as absent without CAP_SYS_ADMIN (ENODATA,
	// as for a cgroup without the mark), so only with it is an unmarked
	// answer an answer.
	d.MarkKnown = hasCapability(capSysAdmin)
	for dir := own; ; dir = filepath.Dir(dir) {
		name := make([]byte, MaxMergeDomainName+1)
		n, err := unix.Getxattr(dir, MergeDomainXattr, name)
		if err == nil || errors.Is(err, unix.ERANGE) {
			d.Cgroup, d.Marked, d.MarkKnown = dir, true, true
			// The kernel's rule: a value that is no name makes the
			// marked subtree a domain of its own.
			if err == nil && CheckMergeDomainName(string(name[:n])) == nil {
				d.Name = string(name[:n])
			}
			break
		}
		if dir == root || len(dir) <= len(root) {
			break
		}
	}
	d.Processes = countProcesses(d.Cgroup)
	return d
}

// maxCountedProcesses bounds the count of processes in a domain: the point
// is whether a process is alone, and a domain at the root of the hierarchy
// would otherwise mean walking every cgroup of the machine.
const maxCountedProcesses = 64

// countProcesses counts the processes in the cgroup dir and below, from the
// cgroup.procs files, up to maxCountedProcesses; -1 if one cannot be read.
func countProcesses(dir string) int {
	n := 0
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n >= maxCountedProcesses {
			return fs.SkipAll
		}
		if e.IsDir() || e.Name() != "cgroup.procs" {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n += strings.Count(string(data), "\n")
		return nil
	})
	if err != nil {
		return -1
	}
	return n
}

// domainFindings says what the merge domain means for merging; the last
// finding is the one that matters most.
func domainFindings(d MergeDomain) []Finding {
	if d.Cgroup == "" {
		return []Finding{{Code: CodeMergeDomain, Fact: "This process's cgroup v2 is unknown, so is its merge domain."}}
	}
	which := "its own cgroup " + d.Cgroup + " (no cgroup at or above it carries " + MergeDomainXattr + ")"
	switch {
	case d.Marked && d.Name != "":
		which = fmt.Sprintf("%q, named by the mark on %s", d.Name, d.Cgroup)
	case d.Marked:
		which = "the marked cgroup " + d.Cgroup + " (its mark is no domain name, so its subtree alone)"
	case !d.MarkKnown:
		which = "its own cgroup " + d.Cgroup + ", unless root marked a cgroup above it, which this process cannot see without CAP_SYS_ADMIN"
	}
	procs := "cannot be counted"
	if d.Processes >= 0 {
		procs = fmt.Sprintf("holds %d processes", d.Processes)
		if d.Processes == 1 {
			procs = "holds this process alone"
		}
	}
	out := []Finding{{Code: CodeMergeDomain, Fact: fmt.Sprintf("UPM merges this process's pages only within its merge domain: %s, which %s.", which, procs)}}
	if d.Processes != 1 {
		return out
	}
	remedy := "Mark their parent or give them one domain name (see upm.MarkMergeDomain)."
	switch {
	case d.Marked:
		out = append(out, Finding{Code: CodeMergeDomain, Fact: "This process is the first of its merge domain: processes that join it later merge with its pages."})
	case d.MarkKnown:
		out = append(out, Finding{Code: CodeAloneInMergeDomain, Fact: "Nothing to merge with: each instance has its own cgroup, and this process is alone in its merge domain.", Remedy: remedy})
	default:
		out = append(out, Finding{Code: CodeAloneInMergeDomain, Fact: "Nothing to merge with, unless a cgroup above this one is marked: each instance has its own cgroup, and this process is alone in its own.", Remedy: remedy})
	}
	return out
}

// Capabilities, as numbered in linux/capability.h.
const capSysAdmin = 21

// hasCapability reports whether the effective capabilities of this process,
// CapEff in /proc/self/status, include cap.
func hasCapability(cap uint) bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			v, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && v&(1<<cap) != 0
		}
	}
	return false
}
