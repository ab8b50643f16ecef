// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"time"
)

// MergeState says whether the memory of a Region is merged.
type MergeState int

const (
	// StateUnknown means the package cannot tell, such as when
	// /sys/kernel/mm/ksm cannot be read.
	StateUnknown MergeState = iota
	// StateMerged means the memory was merged as it was advised (UPM):
	// every page that was present and identical to a page advised before it
	// is merged now. Pages written after Advise merge only when advised
	// again.
	StateMerged
	// StatePending means ksmd will merge the memory in the background;
	// Status.Estimate says about how long that takes.
	StatePending
	// StateNotMerging means nothing will merge the memory as things are:
	// ksmd is stopped, the mapping cannot merge, the system has no backend.
	// Status.Code and Status.Reason say why.
	StateNotMerging
	// StatePartial means Advise failed part of the way: some of the
	// memory may be advised, and merged, and some not. Status.Reason is the
	// error Advise returned.
	StatePartial
	// StateClosed means the Region was unadvised, or its Mapping or Arena
	// closed.
	StateClosed
)

// String returns the state's name: "unknown", "merged", "pending",
// "not-merging", "partial" or "closed".
func (s MergeState) String() string {
	switch s {
	case StateUnknown:
		return "unknown"
	case StateMerged:
		return "merged"
	case StatePending:
		return "pending"
	case StateNotMerging:
		return "not-merging"
	case StatePartial:
		return "partial"
	case StateClosed:
		return "closed"
	default:
		return fmt.Sprintf("MergeState(%d)", int(s))
	}
}

// Status says whether a Region's memory is merged now, will be, or will
// not be, and why, for a program to act on at the call site.
type Status struct {
	State MergeState
	// Code is the stable code of the Finding that decides the state, such
	// as CodeKSMDStopped; see Finding.
	Code string
	// Reason says in a sentence why, and what would change it.
	Reason string
	// Estimate is, for StatePending, about how long ksmd takes to have
	// seen the advised memory twice, from its pages_to_scan and
	// sleep_millisecs or from the KSM advisor's target scan time: the time
	// after which the pages that can merge are merged. It is zero when
	// unknown, and for other states.
	Estimate time.Duration
}

// String returns "STATE (CODE): REASON", with the estimate if there is one.
func (s Status) String() string {
	str := s.State.String()
	if s.Code != "" {
		str += " (" + s.Code + ")"
	}
	if s.Reason != "" {
		str += ": " + s.Reason
	}
	if s.Estimate > 0 {
		str += fmt.Sprintf(" (about %v)", s.Estimate.Round(time.Millisecond))
	}
	return str
}

// Status returns whether the Region's memory is merged, will be merged by
// ksmd (and in about how long), or will not be merged, and why. It reads
// KSM's settings and the Region's mappings each time, so it follows changes
// such as an administrator starting ksmd.
func (r *Region) Status() Status {
	if r == nil {
		return Status{State: StateClosed, Code: CodeClosed, Reason: "the Region is nil"}
	}
	r.mu.Lock()
	mem, failed := r.mem, r.failed
	r.mu.Unlock()
	switch {
	case mem == nil:
		return Status{State: StateClosed, Code: CodeClosed, Reason: "the Region was unadvised, or its Mapping or Arena closed"}
	case failed != nil:
		return Status{State: StatePartial, Code: CodeAdviseFailed, Reason: failed.Error() + "; part of the memory may be advised and merged, the rest not: advise it again, or Unadvise"}
	}
	return regionStatus(mem, r.backend, currentDetection())
}

// Finding codes: stable names of what Diagnose, Region.Status and
// DiagnoseRegion find, for programs and alerts. The sentences that come with
// them may change; the codes do not.
const (
	// CodeBackendForced: UPM_BACKEND overrides the detection.
	CodeBackendForced = "backend-forced"
	// CodeUnsupported: nothing merges pages on this system.
	CodeUnsupported = "unsupported"
	// CodeProbeInconclusive: the backend could not be determined (EACCES,
	// ENOMEM, EPERM); the package asks again at the next call.
	CodeProbeInconclusive = "probe-inconclusive"
	// CodeUPM: the kernel has UPM and merges advised memory at once.
	CodeUPM = "upm"
	// CodeUPMKSMDStopped: ksmd is stopped, which UPM does not need.
	CodeUPMKSMDStopped = "upm-ksmd-stopped"
	// CodeKSM: stock KSM, merged later by ksmd.
	CodeKSM = "ksm"
	// CodeKSMDStopped: KSM's run is 0; nothing merges.
	CodeKSMDStopped = "ksmd-stopped"
	// CodeKSMUnmerging: KSM's run is 2; merged pages are copied back.
	CodeKSMUnmerging = "ksm-unmerging"
	// CodeKSMDIdle: ksmd runs but pages_to_scan is 0.
	CodeKSMDIdle = "ksmd-idle"
	// CodeKSMDRunning: ksmd runs and will merge; with an estimate.
	CodeKSMDRunning = "ksmd-running"
	// CodeKSMDUnknown: /sys/kernel/mm/ksm/run cannot be read.
	CodeKSMDUnknown = "ksmd-unknown"
	// CodeKSMAdvisor: the KSM advisor sets pages_to_scan.
	CodeKSMAdvisor = "ksm-advisor"
	// CodeCountsExact: Region.Merged counts from page flags, exactly.
	CodeCountsExact = "counts-exact"
	// CodeCountsApproximate: Region.Merged estimates without page flags.
	CodeCountsApproximate = "counts-approximate"
	// CodeRegions: how much this process advised.
	CodeRegions = "regions"
	// CodeMergeDomain: the UPM merge domain this process is in.
	CodeMergeDomain = "merge-domain"
	// CodeAloneInMergeDomain: no other process shares this process's merge
	// domain, so UPM has nothing to merge its memory with.
	CodeAloneInMergeDomain = "alone-in-merge-domain"
	// CodeMappingNotMergeable: the memory lies in a mapping that cannot
	// merge (shared, hugetlb, device, file pages) or is not advised.
	CodeMappingNotMergeable = "mapping-not-mergeable"
	// Codes of DiagnoseRegion: what the mappings holding a range are.
	CodeEligible        = "eligible"               // private anonymous memory, which can merge
	CodeAdvised         = "advised"                // every page is advised (VmFlags mg)
	CodeNotAdvised      = "not-advised"            // some pages are not advised
	CodeNotMapped       = "not-mapped"             // a hole: advising fails with ENOMEM
	CodeHugetlb         = "hugetlb"                // hugetlb memory, which never merges
	CodeSharedMapping   = "shared-mapping"         // shared memory: KSM ignores it, UPM refuses it
	CodeSpecialMapping  = "special-mapping"        // device, PFN or I/O memory
	CodeDroppable       = "droppable"              // MAP_DROPPABLE memory
	CodeFileMapping     = "file-mapping"           // a private file mapping: only written pages merge
	CodeTHP             = "transparent-huge-pages" // must be split before merging
	CodeNotPresent      = "pages-not-present"      // never written or swapped out
	CodeTooSmall        = "too-small"              // the range holds no whole page
	CodeSmapsUnreadable = "smaps-unreadable"       // /proc/self/smaps cannot be read

	// CodeAdviseFailed: Advise failed part of the way.
	CodeAdviseFailed = "advise-failed"
	// CodeClosed: the Region was unadvised or closed.
	CodeClosed = "closed"
)

// Finding is one thing Diagnose found: a stable Code to branch or alert on,
// the Fact in a sentence, and the Remedy, if there is one, in another.
type Finding struct {
	Code   string
	Fact   string
	Remedy string
}

// String returns the fact and the remedy.
func (f Finding) String() string {
	if f.Remedy == "" {
		return f.Fact
	}
	return f.Fact + " " + f.Remedy
}
