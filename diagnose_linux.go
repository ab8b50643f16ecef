// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// sysFiles are the places Diagnose reads; tests point them elsewhere.
type sysFiles struct {
	ksmDir     string
	kpageflags string
	// cgroupRoot is where cgroup v2 is mounted, procCgroup this process's
	// /proc/self/cgroup.
	cgroupRoot string
	procCgroup string
	// pfns reports whether this process can read page frame numbers and
	// trust KPF_KSM; nil asks the system.
	pfns func() bool
}

func systemFiles() sysFiles {
	return sysFiles{ksmDir: sysKSMDir, kpageflags: procKPageFlag, cgroupRoot: CgroupV2Root(), procCgroup: procSelfCgroup}
}

// readSysInt reads a file holding one decimal number.
func readSysInt(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return n, nil
}

// outlook is what the backend and KSM's settings mean for advised memory:
// the state, the finding that decides it, and further findings.
type outlook struct {
	status   Status
	findings []Finding
}

// backendOutlook says whether memory advised with det is merged, given KSM's
// files and the bytes advised in all.
func backendOutlook(det detection, files sysFiles, advised int64) outlook {
	var o outlook
	decide := func(state MergeState, f Finding) {
		o.status = Status{State: state, Code: f.Code, Reason: f.String()}
		o.findings = append(o.findings, f)
	}
	runFile := filepath.Join(files.ksmDir, "run")
	run, runErr := readSysInt(runFile)
	_, dirErr := os.Stat(files.ksmDir)
	unknownRun := Finding{
		Code:   CodeKSMDUnknown,
		Fact:   fmt.Sprintf("Cannot read %s (%v), so whether ksmd runs is unknown.", runFile, runErr),
		Remedy: "Containers often hide /sys/kernel/mm; ask the platform, or mount sysfs read-only.",
	}

	switch {
	case det.err != nil:
		code := CodeUnsupported
		if !errors.Is(det.err, ErrUnsupported) {
			code = CodeProbeInconclusive
		}
		decide(StateNotMerging, Finding{
			Code:   code,
			Fact:   fmt.Sprintf("Nothing is merged: %v.", det.err),
			Remedy: "Advise, AdviseFile and Arena.Seal return this error; the data works as usual, unshared.",
		})

	case det.backend == BackendUPM:
		decide(StateMerged, Finding{
			Code: CodeUPM,
			Fact: fmt.Sprintf("The kernel has UPM: MADV_UPM_MERGE is madvise advice %d. Advise merges the pages the program has written with identical pages advised before it in the same merge domain, and returns once they are merged; pages that are not present (never written, or swapped out) are skipped.", det.advice),
		})
		switch {
		case dirErr != nil:
		case runErr != nil:
			o.findings = append(o.findings, unknownRun)
		case run == 0:
			o.findings = append(o.findings, Finding{Code: CodeUPMKSMDStopped, Fact: fmt.Sprintf("ksmd is stopped (%s is 0). UPM does not need it; ksmd would only merge, later, pages that were not present when they were advised.", runFile)})
		case run == 2:
			o.findings = o.findings[:0]
			decide(StateNotMerging, Finding{
				Code:   CodeKSMUnmerging,
				Fact:   fmt.Sprintf("KSM is set to unmerge (%s is 2): merged pages, UPM's included, are copied back into private pages.", runFile),
				Remedy: fmt.Sprintf("Set it to 0 or 1: echo 0 > %s", runFile),
			})
		}

	case det.backend == BackendKSM:
		o.findings = append(o.findings, Finding{Code: CodeKSM, Fact: "The kernel has stock KSM and no UPM: Advise marks pages mergeable (MADV_MERGEABLE) and returns at once; the ksmd kernel thread merges them later, in the background, and only while it runs."})
		switch {
		case runErr != nil:
			o.status = Status{State: StateUnknown, Code: unknownRun.Code, Reason: unknownRun.String()}
			o.findings = append(o.findings, unknownRun)
		case run == 0:
			decide(StateNotMerging, Finding{
				Code:   CodeKSMDStopped,
				Fact:   fmt.Sprintf("ksmd is stopped (%s is 0): advised pages are only marked mergeable, and nothing is merged.", runFile),
				Remedy: fmt.Sprintf("An administrator starts it with: echo 1 > %s", runFile),
			})
		case run == 2:
			decide(StateNotMerging, Finding{
				Code:   CodeKSMUnmerging,
				Fact:   fmt.Sprintf("KSM is unmerging (%s is 2): ksmd copies every merged page back and merges nothing.", runFile),
				Remedy: fmt.Sprintf("Set it to 1: echo 1 > %s", runFile),
			})
		case run == 1:
			scanOutlook(files.ksmDir, advised, decide, &o)
		default:
			f := Finding{Code: CodeKSMDUnknown, Fact: fmt.Sprintf("%s is %d, a value this library does not know.", runFile, run)}
			o.status = Status{State: StateUnknown, Code: f.Code, Reason: f.Fact}
			o.findings = append(o.findings, f)
		}
	}
	return o
}

// scanOutlook explains the pace of a running ksmd, and estimates how long it
// takes to merge the advised memory.
func scanOutlook(dir string, advised int64, decide func(MergeState, Finding), o *outlook) {
	num := func(name string) (int64, error) { return readSysInt(filepath.Join(dir, name)) }
	pages, pagesErr := num("pages_to_scan")
	sleep, sleepErr := num("sleep_millisecs")
	if pagesErr == nil && pages == 0 {
		decide(StateNotMerging, Finding{
			Code:   CodeKSMDIdle,
			Fact:   fmt.Sprintf("ksmd runs but scans no page (%s/pages_to_scan is 0): nothing is merged.", dir),
			Remedy: fmt.Sprintf("Raise it: echo 100 > %s/pages_to_scan", dir),
		})
		return
	}
	// A pass covers every page ksmd tracks, not only this process's.
	passPages := advised / int64(pageSize)
	var tracked int64
	for _, name := range []string{"pages_shared", "pages_sharing", "pages_unshared", "pages_volatile"} {
		if n, err := num(name); err == nil {
			tracked += n
		}
	}
	passPages = max(passPages, tracked)

	mode, _ := os.ReadFile(filepath.Join(dir, "advisor_mode"))
	target, targetErr := num("advisor_target_scan_time")
	if strings.Contains(string(mode), "[scan-time]") && targetErr == nil && target > 0 {
		est := 2 * time.Duration(target) * time.Second
		decide(StatePending, Finding{
			Code: CodeKSMDRunning,
			Fact: fmt.Sprintf("ksmd runs, paced by the KSM advisor (%s/advisor_mode is scan-time) to pass over all mergeable memory every %d s; a page merges once ksmd has found it unchanged on two passes, so in about %v.", dir, target, est),
		})
		o.status.Estimate = est
		o.findings = append(o.findings, Finding{Code: CodeKSMAdvisor, Fact: fmt.Sprintf("The KSM advisor changes pages_to_scan as it goes (advisor_target_scan_time is %d s).", target)})
		return
	}
	if pagesErr != nil || sleepErr != nil {
		decide(StatePending, Finding{Code: CodeKSMDRunning, Fact: fmt.Sprintf("ksmd runs; its pace is unknown (%v).", errors.Join(pagesErr, sleepErr))})
		return
	}
	perSecond := float64(pages) * 1000 / float64(max(sleep, 1))
	msg := fmt.Sprintf("ksmd runs and scans %d pages every %d ms, about %s a second. A page merges once ksmd has found it unchanged on two passes over all mergeable memory",
		pages, sleep, formatBytes(int64(perSecond)*int64(pageSize)))
	var est time.Duration
	if passPages > 0 {
		est = time.Duration(2 * float64(passPages) / perSecond * float64(time.Second))
		msg += fmt.Sprintf(", so the %s advised here take %v or more, longer while other processes advise memory too", formatBytes(advised), est.Round(time.Millisecond))
	}
	decide(StatePending, Finding{Code: CodeKSMDRunning, Fact: msg + "."})
	o.status.Estimate = est
	if strings.Contains(string(mode), "[scan-time]") {
		o.findings = append(o.findings, Finding{Code: CodeKSMAdvisor, Fact: fmt.Sprintf("The KSM advisor (%s/advisor_mode is scan-time) changes pages_to_scan as it goes, so the estimate is rough.", dir)})
	}
}

func diagnose(det detection, files sysFiles, regions []*Region) Diagnosis {
	d := Diagnosis{Backend: det.backend, Forced: det.forced, Advice: det.advice, KSMRun: -1}
	if det.forced != "" {
		d.Findings = append(d.Findings, Finding{Code: CodeBackendForced, Fact: fmt.Sprintf("%s=%s overrides the detection of the backend.", EnvBackend, det.forced)})
	}
	var advised int64
	for _, r := range regions {
		advised += int64(r.size)
	}
	if run, err := readSysInt(filepath.Join(files.ksmDir, "run")); err == nil {
		d.KSMRun = int(run)
	}
	o := backendOutlook(det, files, advised)
	d.Merges = o.status.State == StateMerged || o.status.State == StatePending
	d.Findings = append(d.Findings, o.findings...)

	if det.err == nil && det.backend == BackendUPM {
		d.Domain = readMergeDomain(files.cgroupRoot, files.procCgroup)
		d.Findings = append(d.Findings, domainFindings(d.Domain)...)
	}

	if det.err == nil {
		pfns := files.pfns
		if pfns == nil {
			pfns = func() bool { return pfnsReadable(files.kpageflags) }
		}
		if pfns() {
			d.Findings = append(d.Findings, Finding{Code: CodeCountsExact, Fact: fmt.Sprintf("Region.Merged is exact: this process can read page frame numbers (CAP_SYS_ADMIN) and page flags (%s), and the kernel sets KPF_KSM on merged pages only.", files.kpageflags)})
		} else {
			d.Findings = append(d.Findings, Finding{
				Code:   CodeCountsApproximate,
				Fact:   "Region.Merged is not exact: page frame numbers and flags need CAP_SYS_ADMIN and a kernel whose KPF_KSM marks merged pages only. It counts the pages of the region that /proc/self/pagemap shows as not mapped exclusively (merged pages with other sharers, and pages shared with a forked process), else the KSM lines of /proc/self/smaps.",
				Remedy: "Run with CAP_SYS_ADMIN for exact counts; ReadProcessStats gives the process's total merged pages (ksm_merging_pages) without it.",
			})
		}
	}
	if len(regions) > 0 {
		noun := "regions"
		if len(regions) == 1 {
			noun = "region"
		}
		d.Findings = append(d.Findings, Finding{Code: CodeRegions, Fact: fmt.Sprintf("This process has %d advised %s, %s in all.", len(regions), noun, formatBytes(advised))})
	}
	return d
}

// regionStatus is Region.Status of memory advised with backend b.
func regionStatus(mem []byte, b Backend, det detection) Status {
	var advised int64
	for _, r := range liveRegions() {
		advised += int64(r.size)
	}
	o := backendOutlook(det, systemFiles(), advised)
	st := o.status
	if st.State != StateMerged && st.State != StatePending {
		return st
	}
	if b == BackendKSM && det.backend == BackendUPM {
		// Advised with MADV_MERGEABLE (UPM_BACKEND=ksm at the time): ksmd's.
		st = Status{State: StatePending, Code: CodeKSM, Reason: "advised with MADV_MERGEABLE: ksmd merges it, while it runs"}
	}
	rd := diagnoseRegion(mem, det)
	if !rd.Eligible || !rd.Advised {
		reason := "not every page is advised"
		if len(rd.Findings) > 0 {
			var parts []string
			for _, f := range rd.Findings {
				parts = append(parts, f.String())
			}
			reason = strings.Join(parts, " ")
		}
		return Status{State: StateNotMerging, Code: CodeMappingNotMergeable, Reason: reason}
	}
	if st.State == StateMerged && det.backend == BackendUPM {
		// Alone in a domain that is its own cgroup: nothing merges with
		// it, now or later. Without CAP_SYS_ADMIN a marked parent would go
		// unseen, so the state says so only when the marks are known.
		d := readMergeDomain(CgroupV2Root(), procSelfCgroup)
		if f := domainFindings(d); d.MarkKnown && f[len(f)-1].Code == CodeAloneInMergeDomain {
			return Status{State: StateNotMerging, Code: CodeAloneInMergeDomain, Reason: f[len(f)-1].String()}
		}
	}
	return st
}

func diagnoseRegion(mem []byte, det detection) RegionDiagnosis {
	lo := addrOf(mem)
	hi := lo + uintptr(len(mem))
	d := RegionDiagnosis{Addr: lo, Len: len(mem)}
	var findings []Finding
	add := func(code, remedy, format string, args ...any) {
		findings = append(findings, Finding{Code: code, Fact: fmt.Sprintf(format, args...), Remedy: remedy})
	}

	vmas, err := readSmaps()
	if err != nil {
		d.Findings = []Finding{{Code: CodeSmapsUnreadable, Fact: fmt.Sprintf("Cannot tell: %v.", err)}}
		return d
	}
	eligible, advised := true, true
	pos := lo
	for _, v := range overlapping(vmas, lo, hi) {
		if v.start > pos {
			add(CodeNotMapped, "", "%s at %#x are not mapped: advising them fails with ENOMEM.", formatBytes(int64(v.start-pos)), pos)
			eligible, advised = false, false
		}
		part := fmt.Sprintf("%#x-%#x (%s)", max(v.start, lo), min(v.end, hi), v.describe())
		switch {
		case v.hasFlag("ht"):
			eligible = false
			add(CodeHugetlb, "", "%s is hugetlb memory, which neither KSM nor UPM merges.", part)
		case v.hasFlag("sh") || v.hasFlag("ms"):
			eligible = false
			add(CodeSharedMapping, "Only private anonymous memory merges; copy the data there, with AdviseFile for a file.", "%s is a shared mapping: KSM ignores advice on shared memory and UPM refuses it (EINVAL).", part)
		case v.hasFlag("pf") || v.hasFlag("io") || v.hasFlag("mm") || v.hasFlag("de"):
			eligible = false
			add(CodeSpecialMapping, "", "%s is device or special memory, which cannot merge.", part)
		case v.hasFlag("dp"):
			eligible = false
			add(CodeDroppable, "", "%s is droppable memory, which cannot merge.", part)
		case v.fileBacked():
			eligible = false
			anon, _ := v.bytes("Anonymous")
			rss, _ := v.bytes("Rss")
			add(CodeFileMapping, "Use MapFile to share a file in place, or AdviseFile for a private copy that merges.", "%s maps a file privately: only the pages the program has written (%s of the %s resident in this mapping) are anonymous and can merge; the others are the file's page cache, which the readers of the file share already.", part, formatBytes(anon), formatBytes(rss))
		}
		if !v.hasFlag("mg") {
			advised = false
		}
		if huge, _ := v.bytes("AnonHugePages"); huge > 0 {
			add(CodeTHP, "", "The mapping holding %s has %s in transparent huge pages, which must be split before they merge.", part, formatBytes(huge))
		}
		pos = v.end
	}
	if pos < hi {
		add(CodeNotMapped, "", "%s at %#x are not mapped: advising them fails with ENOMEM.", formatBytes(int64(hi-pos)), pos)
		eligible, advised = false, false
	}

	pages := len(mem) / pageSize
	var summary []Finding
	if eligible {
		summary = append(summary, Finding{Code: CodeEligible, Fact: fmt.Sprintf("All %d pages lie in private anonymous memory, which can merge.", pages)})
		if present, err := presentPages(mem); err == nil && present < pages {
			add(CodeNotPresent, "", "%d of the %d pages are not present (never written, or swapped out): UPM skips them when they are advised, and KSM considers them once they are present.", pages-present, pages)
		}
	}
	if advised {
		summary = append(summary, Finding{Code: CodeAdvised, Fact: "They are advised (VmFlags mg)."})
	} else if eligible {
		summary = append(summary, Finding{Code: CodeNotAdvised, Fact: "Not all of them are advised.", Remedy: "Call Advise."})
	}
	if det.err != nil {
		summary = append(summary, Finding{Code: CodeUnsupported, Fact: fmt.Sprintf("This system does not merge pages: %v.", det.err)})
	}
	d.Eligible, d.Advised = eligible, advised
	d.Findings = append(summary, findings...)
	return d
}

// describe names what a mapping holds.
func (v *vma) describe() string {
	switch {
	case v.path == "":
		return "anonymous memory"
	case v.path == "[heap]":
		return "the C heap"
	case v.fileBacked():
		return "file " + v.path
	default:
		return v.path
	}
}
