// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
}

func systemFiles() sysFiles {
	return sysFiles{ksmDir: sysKSMDir, kpageflags: procKPageFlag}
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

func diagnose(det detection, files sysFiles, regions []*Region) Diagnosis {
	d := Diagnosis{Backend: det.backend, Forced: det.forced, Advice: det.advice, KSMRun: -1}
	add := func(format string, args ...any) {
		d.Findings = append(d.Findings, fmt.Sprintf(format, args...))
	}
	if det.forced != "" {
		add("%s=%s overrides the detection of the backend.", EnvBackend, det.forced)
	}

	var advised int64
	for _, r := range regions {
		advised += int64(r.size)
	}
	runFile := filepath.Join(files.ksmDir, "run")
	run, runErr := readSysInt(runFile)
	if runErr == nil {
		d.KSMRun = int(run)
	}
	_, dirErr := os.Stat(files.ksmDir)
	hasKSM := dirErr == nil
	cannotReadRun := func() {
		add("Cannot read %s (%v), so whether ksmd runs is unknown; containers often hide /sys/kernel/mm.", runFile, runErr)
	}

	switch {
	case det.err != nil:
		add("Nothing is merged: %v. Advise, AdviseFile and Arena.Seal return this error, which wraps ErrUnsupported; the data works as usual, unshared.", det.err)

	case det.backend == BackendUPM:
		d.Merges = true
		add("The kernel has UPM: MADV_UPM_MERGE is madvise advice %d. Advise merges the pages the program has written with identical pages advised before it, and returns once they are merged; pages that are not present (never written, or swapped out) are skipped.", det.advice)
		switch {
		case !hasKSM:
		case runErr != nil:
			cannotReadRun()
		case run == 0:
			add("ksmd is stopped (%s is 0). UPM does not need it; ksmd would only merge, later, pages that were not present when they were advised.", runFile)
		case run == 2:
			d.Merges = false
			add("KSM is set to unmerge (%s is 2): merged pages, UPM's included, are copied back into private pages until run is set to 0 or 1.", runFile)
		}

	case det.backend == BackendKSM:
		add("The kernel has stock KSM and no UPM: Advise marks pages mergeable (MADV_MERGEABLE) and returns at once; the ksmd kernel thread merges them later, in the background, and only while it runs.")
		switch {
		case runErr != nil:
			cannotReadRun()
		case run == 0:
			add("ksmd is stopped (%s is 0): advised pages are only marked mergeable, and nothing is merged until an administrator starts it with: echo 1 > %s", runFile, runFile)
		case run == 2:
			add("KSM is unmerging (%s is 2): ksmd copies every merged page back and merges nothing until run is set to 1.", runFile)
		case run == 1:
			d.Merges = diagnoseScan(files.ksmDir, advised, add)
		default:
			add("%s is %d, a value this library does not know.", runFile, run)
		}
	}

	if det.err == nil {
		if f, err := os.Open(files.kpageflags); err == nil {
			f.Close()
			add("Region.Merged is exact: this process can read page flags (%s).", files.kpageflags)
		} else {
			add("Region.Merged counts merged pages from /proc/self/smaps, as %s cannot be read (%v; page flags are for root, with CAP_SYS_ADMIN): the count is exact for regions made of whole mappings and a lower bound otherwise.", files.kpageflags, errors.Unwrap(err))
		}
	}
	if len(regions) > 0 {
		noun := "regions"
		if len(regions) == 1 {
			noun = "region"
		}
		add("This process has %d advised %s, %s in all.", len(regions), noun, formatBytes(advised))
	}
	return d
}

// diagnoseScan explains the pace of a running ksmd, and reports whether it
// merges anything.
func diagnoseScan(dir string, advised int64, add func(string, ...any)) bool {
	pages, pagesErr := readSysInt(filepath.Join(dir, "pages_to_scan"))
	sleep, sleepErr := readSysInt(filepath.Join(dir, "sleep_millisecs"))
	if pagesErr == nil && pages == 0 {
		add("ksmd runs but scans no page (%s/pages_to_scan is 0): nothing is merged.", dir)
		return false
	}
	if pagesErr != nil || sleepErr != nil {
		add("ksmd runs; its pace is unknown (%v).", errors.Join(pagesErr, sleepErr))
		return true
	}
	perSecond := float64(pages) * 1000 / float64(max(sleep, 1))
	msg := fmt.Sprintf("ksmd runs and scans %d pages every %d ms, about %s a second. A page merges once ksmd has found it unchanged on two passes over all mergeable memory",
		pages, sleep, formatBytes(int64(perSecond)*int64(pageSize)))
	if advised > 0 {
		seconds := 2 * float64(advised/int64(pageSize)) / perSecond
		msg += fmt.Sprintf(", so the %s advised here take %v or more, longer while other processes advise memory too", formatBytes(advised), time.Duration(seconds*float64(time.Second)).Round(time.Millisecond))
	}
	add("%s.", msg)
	if mode, err := os.ReadFile(filepath.Join(dir, "advisor_mode")); err == nil && strings.Contains(string(mode), "[scan-time]") {
		add("The KSM advisor (%s/advisor_mode is scan-time) changes pages_to_scan as it goes.", dir)
	}
	return true
}

func diagnoseRegion(mem []byte, det detection) RegionDiagnosis {
	lo := addrOf(mem)
	hi := lo + uintptr(len(mem))
	d := RegionDiagnosis{Addr: lo, Len: len(mem)}
	var findings []string
	add := func(format string, args ...any) {
		findings = append(findings, fmt.Sprintf(format, args...))
	}

	vmas, err := readSmaps()
	if err != nil {
		d.Findings = []string{fmt.Sprintf("Cannot tell: %v.", err)}
		return d
	}
	eligible, advised := true, true
	pos := lo
	for _, v := range overlapping(vmas, lo, hi) {
		if v.start > pos {
			add("%s at %#x are not mapped: advising them fails with ENOMEM.", formatBytes(int64(v.start-pos)), pos)
			eligible, advised = false, false
		}
		part := fmt.Sprintf("%#x-%#x (%s)", max(v.start, lo), min(v.end, hi), v.describe())
		switch {
		case v.hasFlag("ht"):
			eligible = false
			add("%s is hugetlb memory, which neither KSM nor UPM merges.", part)
		case v.hasFlag("sh") || v.hasFlag("ms"):
			eligible = false
			add("%s is a shared mapping: KSM ignores advice on shared memory and UPM refuses it (EINVAL). Only private anonymous memory merges; copy the data there, with AdviseFile for a file.", part)
		case v.hasFlag("pf") || v.hasFlag("io") || v.hasFlag("mm") || v.hasFlag("de"):
			eligible = false
			add("%s is device or special memory, which cannot merge.", part)
		case v.hasFlag("dp"):
			eligible = false
			add("%s is droppable memory, which cannot merge.", part)
		case v.fileBacked():
			eligible = false
			anon, _ := v.bytes("Anonymous")
			rss, _ := v.bytes("Rss")
			add("%s maps a file privately: only the pages the program has written (%s of the %s resident in this mapping) are anonymous and can merge; the others are the file's page cache, which the readers of the file share already. Use MapFile to share a file in place, or AdviseFile for a private copy that merges.", part, formatBytes(anon), formatBytes(rss))
		}
		if !v.hasFlag("mg") {
			advised = false
		}
		if huge, _ := v.bytes("AnonHugePages"); huge > 0 {
			add("The mapping holding %s has %s in transparent huge pages, which must be split before they merge.", part, formatBytes(huge))
		}
		pos = v.end
	}
	if pos < hi {
		add("%s at %#x are not mapped: advising them fails with ENOMEM.", formatBytes(int64(hi-pos)), pos)
		eligible, advised = false, false
	}

	pages := len(mem) / pageSize
	var summary []string
	if eligible {
		summary = append(summary, fmt.Sprintf("All %d pages lie in private anonymous memory, which can merge.", pages))
		if present, err := presentPages(mem); err == nil && present < pages {
			add("%d of the %d pages are not present (never written, or swapped out): UPM skips them when they are advised, and KSM considers them once they are present.", pages-present, pages)
		}
	}
	if advised {
		summary = append(summary, "They are advised (VmFlags mg).")
	} else if eligible {
		summary = append(summary, "Not all of them are advised: call Advise.")
	}
	if det.err != nil {
		summary = append(summary, fmt.Sprintf("This system does not merge pages: %v.", det.err))
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

// presentPages counts the pages of mem that are in memory, from the present
// bit of /proc/self/pagemap, which needs no privilege.
func presentPages(mem []byte) (int, error) {
	f, err := os.Open(procPagemap)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	pages := len(mem) / pageSize
	entries := make([]byte, 8*pages)
	if _, err := f.ReadAt(entries, int64(addrOf(mem)/uintptr(pageSize))*8); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	present := 0
	for i := range pages {
		if binary.NativeEndian.Uint64(entries[8*i:])&pagemapPresent != 0 {
			present++
		}
	}
	return present, nil
}
