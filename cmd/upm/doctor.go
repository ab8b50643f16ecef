// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/upm-project/upm"
)

// Codes of what upm doctor finds about the node, beside the library's
// (upm.Code*): stable, for scripts and alerts.
const (
	// codeAloneInDomain: processes of one command advised memory, each in
	// a merge domain of its own, so nothing merges between them.
	codeAloneInDomain = "node-alone-in-domain"
	// codeDomainsUnknown: the processes' merge domains cannot be read
	// (trusted.* attributes need CAP_SYS_ADMIN).
	codeDomainsUnknown = "node-domains-unknown"
	// codeNearLimit: a process keeps nine tenths or more of
	// max_pages_per_process pages in UPM's index.
	codeNearLimit = "node-near-page-limit"
	// codeScanTime: ksmd at its current pace takes long to scan what is
	// advised on the node.
	codeScanTime = "node-ksmd-scan-time"
	// codeUnreadable: processes whose ksm_stat this user cannot read.
	codeUnreadable = "node-processes-unreadable"
)

// nodeFinding is one thing upm doctor found.
type nodeFinding struct {
	Code   string `json:"code"`
	Fact   string `json:"fact"`
	Remedy string `json:"remedy,omitempty"`
	// PIDs are the processes it is about, if any.
	PIDs []int `json:"pids,omitempty"`
}

// slowScan is the time per full ksmd scan above which doctor says so.
const slowScanSeconds = 60

// nodeFindings looks at the processes top shows and the node's settings.
func nodeFindings(r topReport, st upm.SystemStats) []nodeFinding {
	var fs []nodeFinding
	pageSize := uint64(os.Getpagesize())

	// One command, many domains of one process each: the mistake of
	// marking no domain for instances that each get a cgroup of their own.
	if st.UPM.Present {
		byCommand := map[string][]procRow{}
		unknown := 0
		for _, p := range r.Processes {
			if p.RmapItems == 0 {
				continue // nothing advised through UPM (or nothing yet)
			}
			if p.Domain == "?" || p.Domain == "" {
				unknown++
				continue
			}
			byCommand[p.Command] = append(byCommand[p.Command], p)
		}
		commands := make([]string, 0, len(byCommand))
		for c := range byCommand {
			commands = append(commands, c)
		}
		sort.Strings(commands)
		for _, c := range commands {
			perDomain := map[string]int{}
			for _, p := range byCommand[c] {
				perDomain[p.Domain]++
			}
			var alone []int
			for _, p := range byCommand[c] {
				if perDomain[p.Domain] == 1 && strings.HasPrefix(p.Domain, "cgroup:") {
					alone = append(alone, p.PID)
				}
			}
			if len(alone) >= 2 {
				fs = append(fs, nodeFinding{Code: codeAloneInDomain, PIDs: alone,
					Fact:   fmt.Sprintf("%d processes of %s advised memory, each alone in its own merge domain: nothing can merge between them.", len(alone), c),
					Remedy: "Give their cgroups one domain name: upm domains mark CGROUP NAME for each (or let the OCI hook do it from an annotation)."})
			}
		}
		if unknown > 0 {
			fs = append(fs, nodeFinding{Code: codeDomainsUnknown,
				Fact:   fmt.Sprintf("The merge domains of %d processes that advised memory cannot be read.", unknown),
				Remedy: "Run as root (the domain marks are trusted.* attributes)."})
		}
		if max := st.UPM.Values["max_pages_per_process"]; max > 0 {
			for _, p := range r.Processes {
				if p.RmapItems*10 >= max*9 {
					fs = append(fs, nodeFinding{Code: codeNearLimit, PIDs: []int{p.PID},
						Fact:   fmt.Sprintf("Process %d (%s) keeps %d of at most %d pages in UPM's index: its next advise may fail with ENOSPC.", p.PID, p.Command, p.RmapItems, max),
						Remedy: "Unadvise what it no longer needs, or raise /sys/kernel/mm/upm/max_pages_per_process."})
				}
			}
		}
	}

	// ksmd's pace against what is advised: on a kernel without UPM, ksmd
	// is what merges.
	if st.KSM.Present && !st.UPM.Present && st.KSM.Run == 1 && st.KSM.PagesToScan > 0 {
		var advised uint64
		for _, p := range r.Processes {
			advised += p.AdvisedBytes / pageSize
		}
		seconds := float64(advised) / float64(st.KSM.PagesToScan) * float64(max(st.KSM.SleepMillisecs, 1)) / 1000
		if seconds > slowScanSeconds {
			fs = append(fs, nodeFinding{Code: codeScanTime,
				Fact: fmt.Sprintf("ksmd will take about %.0f s per scan of the %s advised on this node (%d pages every %d ms), and merges a page on its second scan.",
					seconds, humanBytes(int64(advised*pageSize)), st.KSM.PagesToScan, st.KSM.SleepMillisecs),
				Remedy: "Raise /sys/kernel/mm/ksm/pages_to_scan or lower sleep_millisecs, or use the UPM kernel, which merges when memory is advised."})
		}
	}
	if r.Unreadable > 0 {
		fs = append(fs, nodeFinding{Code: codeUnreadable,
			Fact:   fmt.Sprintf("%d processes were not looked at: their /proc/PID/ksm_stat is readable by their owner and root only.", r.Unreadable),
			Remedy: "Run as root to see every process."})
	}
	return fs
}

// systemFindings are the library's findings about the kernel and ksmd;
// those about the calling process itself (its domain, its regions, how
// exactly it can count) are not the node's.
func systemFindings(d upm.Diagnosis) []nodeFinding {
	var fs []nodeFinding
	for _, f := range d.Findings {
		switch f.Code {
		case upm.CodeCountsExact, upm.CodeCountsApproximate, upm.CodeRegions,
			upm.CodeMergeDomain, upm.CodeAloneInMergeDomain, upm.CodeMappingNotMergeable:
			continue
		}
		fs = append(fs, nodeFinding{Code: f.Code, Fact: f.Fact, Remedy: f.Remedy})
	}
	return fs
}

func doctor(w io.Writer, format string) error {
	r, err := readTop("/proc", domainName)
	if err != nil {
		return err
	}
	st, _ := upm.ReadSystemStats() // what could be read is used
	findings := append(systemFindings(upm.Diagnose()), nodeFindings(r, st)...)
	if format == "json" {
		return writeJSON(w, struct {
			Findings []nodeFinding `json:"findings"`
		}{findings})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range findings {
		fmt.Fprintf(tw, "%s\t%s\n", f.Code, f.Fact)
		if f.Remedy != "" {
			fmt.Fprintf(tw, "\t%s\n", f.Remedy)
		}
	}
	return tw.Flush()
}
