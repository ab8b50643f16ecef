// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unsafe"
)

// Diagnosis explains whether and how this system merges advised memory.
//
// madvise(MADV_MERGEABLE) succeeds on any kernel with KSM, even while ksmd
// is stopped and nothing will ever be merged; Diagnose is how to find out.
type Diagnosis struct {
	// Backend is CurrentBackend.
	Backend Backend
	// Forced is the value of UPM_BACKEND when it overrides detection.
	Forced string
	// Merges reports whether advised memory is merged with no one changing
	// a setting: with a UPM kernel, or with KSM while ksmd runs and scans.
	Merges bool
	// Advice is the madvise advice number of MADV_UPM_MERGE, or 0 without
	// a UPM kernel.
	Advice int
	// KSMRun is /sys/kernel/mm/ksm/run: 0 when ksmd is stopped, 1 when it
	// merges, 2 when it unmerges; -1 when there is no KSM or the file cannot
	// be read.
	KSMRun int
	// Domain is the UPM merge domain of this process; see MergeDomain.
	Domain MergeDomain
	// Findings are what Diagnose found, the most important first, each
	// with a stable code (CodeKSMDStopped, CodeAloneInMergeDomain, ...).
	Findings []Finding
}

// Has reports whether the diagnosis has a finding with the given code.
func (d Diagnosis) Has(code string) bool { return hasCode(d.Findings, code) }

// MergeDomain is the merge domain of a process on a UPM kernel: named by
// the nearest cgroup at or above its own that carries MergeDomainXattr, or
// else its own cgroup. The UPM kernel merges pages only within one domain.
type MergeDomain struct {
	// Cgroup is the marked cgroup directory, or the process's own when
	// none is marked, such as "/sys/fs/cgroup/fn-imageclass"; empty when
	// unknown (no cgroup v2).
	Cgroup string
	// Marked reports whether Cgroup carries MergeDomainXattr; when false
	// the domain is the process's own cgroup.
	Marked bool
	// Name is the domain's name, the mark's value: every cgroup marked
	// with it is in the domain. Empty when not Marked, or when the mark is
	// no valid name (then the domain is Cgroup's subtree alone).
	Name string
	// MarkKnown reports whether the marks could be read: trusted.*
	// attributes read as absent without CAP_SYS_ADMIN, so without it
	// Cgroup is the process's own cgroup and a marked ancestor would go
	// unseen.
	MarkKnown bool
	// Processes is the number of processes in Cgroup and the cgroups below
	// it, from their cgroup.procs files; -1 when they cannot be read. The
	// count stops at 64, as what matters is whether the process is alone.
	Processes int
}

// Diagnose examines the kernel, its settings and this process, and says in
// plain words whether advised memory will be merged and why not. Each
// finding carries a stable code (the Code constants) for programs and
// alerts. On a UPM kernel it reports the process's merge domain and whether
// the process is alone in it. It needs no privilege; without CAP_SYS_ADMIN
// it cannot see merge-domain marks, and says so. For one Region,
// Region.Status gives the same answer as a value.
func Diagnose() Diagnosis {
	return diagnose(currentDetection(), systemFiles(), liveRegions())
}

// String returns the diagnosis as lines of text: a summary, then the
// findings.
func (d Diagnosis) String() string {
	var b strings.Builder
	verdict := "advised memory is merged"
	if !d.Merges {
		verdict = "advised memory is NOT merged"
	}
	fmt.Fprintf(&b, "upm: backend %s: %s\n", d.Backend, verdict)
	for _, f := range d.Findings {
		fmt.Fprintf(&b, "  - %s [%s]\n", f, f.Code)
	}
	return b.String()
}

// RegionDiagnosis explains whether the pages of a range of memory can be
// merged, and whether they are advised.
type RegionDiagnosis struct {
	// Addr and Len are the page-aligned interior of the range, the part
	// Advise would advise; both are 0 when it holds no whole page.
	Addr uintptr
	Len  int
	// Eligible reports whether every page of the interior lies in private
	// anonymous memory that KSM and UPM can merge.
	Eligible bool
	// Advised reports whether every page of the interior is advised
	// (VM_MERGEABLE).
	Advised bool
	// Findings are what was found, the summary first, each with a stable
	// code (CodeSharedMapping, CodeNotPresent, ...).
	Findings []Finding
}

// Has reports whether the diagnosis has a finding with the given code.
func (d RegionDiagnosis) Has(code string) bool { return hasCode(d.Findings, code) }

// DiagnoseRegion examines the memory mappings that hold b, and says whether
// its whole pages can be merged: not if they are shared mappings, hugetlb
// pages, device memory, file pages, or not mapped at all. It reports too
// whether the pages are advised, and what is in the way of merging them
// now, such as pages that are not present.
func DiagnoseRegion(b []byte) RegionDiagnosis {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	mem, err := interior(p, len(b))
	if err != nil {
		return RegionDiagnosis{Findings: []Finding{{Code: CodeTooSmall, Fact: fmt.Sprintf("Nothing can be advised: %v.", err)}}}
	}
	return diagnoseRegion(mem, currentDetection())
}

// Diagnose is DiagnoseRegion of the Region's memory.
func (r *Region) Diagnose() RegionDiagnosis {
	if r == nil {
		return RegionDiagnosis{Findings: []Finding{{Code: CodeClosed, Fact: "The Region is nil."}}}
	}
	r.mu.Lock()
	mem := r.mem
	r.mu.Unlock()
	if mem == nil {
		return RegionDiagnosis{
			Addr:     r.addr,
			Len:      r.size,
			Findings: []Finding{{Code: CodeClosed, Fact: "The Region was unadvised, or its Mapping or Arena closed."}},
		}
	}
	return diagnoseRegion(mem, currentDetection())
}

// String returns the diagnosis as lines of text: a summary, then the
// findings.
func (d RegionDiagnosis) String() string {
	var b strings.Builder
	eligible, advised := "can be merged", "advised"
	if !d.Eligible {
		eligible = "can NOT all be merged"
	}
	if !d.Advised {
		advised = "not all advised"
	}
	fmt.Fprintf(&b, "upm: %d bytes at %#x: %s, %s\n", d.Len, d.Addr, eligible, advised)
	for _, f := range d.Findings {
		fmt.Fprintf(&b, "  - %s [%s]\n", f, f.Code)
	}
	return b.String()
}

// formatBytes writes n bytes for people: "64 MiB", "1.5 KiB", "100 bytes".
func formatBytes(n int64) string {
	units := [...]string{"KiB", "MiB", "GiB", "TiB"}
	if n < 1024 && n > -1024 {
		return strconv.FormatInt(n, 10) + " bytes"
	}
	f := float64(n) / 1024
	i := 0
	for (f >= 1024 || f <= -1024) && i < len(units)-1 {
		f /= 1024
		i++
	}
	return strings.TrimSuffix(strconv.FormatFloat(f, 'f', 1, 64), ".0") + " " + units[i]
}

// hasCode reports whether one of findings has the given code.
func hasCode(findings []Finding, code string) bool {
	return slices.ContainsFunc(findings, func(f Finding) bool { return f.Code == code })
}
