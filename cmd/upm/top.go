// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/upm-project/upm"
)

// procRow is one process as upm top shows it.
type procRow struct {
	PID     int    `json:"pid"`
	Command string `json:"command"`
	// Cgroup is the process's cgroup v2 path, as /proc/PID/cgroup has it.
	Cgroup string `json:"cgroup"`
	// Domain is its merge domain: the domain's name, or the cgroup whose
	// subtree is an unnamed domain; "?" when the marks cannot be read.
	Domain string `json:"domain"`
	// MergingPages and RmapItems are ksm_merging_pages and ksm_rmap_items
	// of /proc/PID/ksm_stat; ProfitBytes is KSM's ksm_process_profit:
	// bytes merged less the bookkeeping they cost.
	MergingPages uint64 `json:"merging_pages"`
	RmapItems    uint64 `json:"rmap_items"`
	ProfitBytes  int64  `json:"profit_bytes"`
	// AdvisedRanges and AdvisedBytes are the mappings marked mergeable
	// (MADV_MERGEABLE or MADV_UPM_MERGE), from /proc/PID/smaps.
	AdvisedRanges int    `json:"advised_ranges"`
	AdvisedBytes  uint64 `json:"advised_bytes"`
}

// topReport is what upm top shows: the processes, and how many it could not
// look into (without root, only one's own).
type topReport struct {
	Processes  []procRow `json:"processes"`
	Unreadable int       `json:"unreadable"`
}

// readTop reads every process under procRoot (/proc) that has memory
// advised for merging or merged, by profit, largest first.
func readTop(procRoot string, domainOf func(pid int) string) (topReport, error) {
	r := topReport{Processes: []procRow{}}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return r, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !e.IsDir() {
			continue
		}
		dir := filepath.Join(procRoot, e.Name())
		stat, err := readKSMStat(filepath.Join(dir, "ksm_stat"))
		switch {
		case errors.Is(err, fs.ErrPermission):
			r.Unreadable++
			continue
		case err != nil:
			continue // gone meanwhile, or a kernel without ksm_stat
		}
		row := procRow{PID: pid}
		row.MergingPages, _ = strconv.ParseUint(stat["ksm_merging_pages"], 10, 64)
		row.RmapItems, _ = strconv.ParseUint(stat["ksm_rmap_items"], 10, 64)
		// Linux 6.12 has no ksm_mergeable yet: there, KSM's bookkeeping
		// (what UPM and ksmd's scans looked at) and merged pages tell.
		if stat["ksm_mergeable"] != "yes" && row.MergingPages == 0 && row.RmapItems == 0 {
			continue
		}
		row.Command, row.Cgroup = readLine(filepath.Join(dir, "comm")), readCgroup(filepath.Join(dir, "cgroup"))
		row.ProfitBytes, _ = strconv.ParseInt(stat["ksm_process_profit"], 10, 64)
		row.AdvisedRanges, row.AdvisedBytes = readMergeableRanges(filepath.Join(dir, "smaps"))
		if domainOf != nil {
			row.Domain = domainOf(pid)
		}
		r.Processes = append(r.Processes, row)
	}
	sort.SliceStable(r.Processes, func(i, j int) bool {
		a, b := r.Processes[i], r.Processes[j]
		if a.ProfitBytes != b.ProfitBytes {
			return a.ProfitBytes > b.ProfitBytes
		}
		return a.PID < b.PID
	})
	return r, nil
}

// readKSMStat reads /proc/PID/ksm_stat: "name value" lines, and "name: yes"
// for the flags.
func readKSMStat(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok {
			m[strings.TrimSuffix(k, ":")] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

func readLine(path string) string {
	data, _ := os.ReadFile(path)
	return strings.TrimSpace(string(data))
}

// readCgroup returns the cgroup v2 path of /proc/PID/cgroup ("0::/path").
func readCgroup(path string) string {
	data, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}

// readMergeableRanges counts the mappings of a smaps file whose VmFlags have
// "mg" (VM_MERGEABLE), and their size.
func readMergeableRanges(path string) (n int, bytes uint64) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	var size uint64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "Size:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			size = kb << 10
			continue
		}
		if v, ok := strings.CutPrefix(line, "VmFlags:"); ok {
			for _, fl := range strings.Fields(v) {
				if fl == "mg" {
					n++
					bytes += size
					break
				}
			}
		}
	}
	return n, bytes
}

// domainName says which merge domain a process is in, for upm top.
func domainName(pid int) string {
	d, err := upm.MergeDomainOf(pid)
	switch {
	case err != nil, d.Cgroup == "":
		return ""
	case !d.MarkKnown:
		return "?"
	case d.Name != "":
		return d.Name
	}
	return "cgroup:" + cgroupPath(d.Cgroup)
}

// cgroupPath is a cgroup directory as /proc/PID/cgroup names it.
func cgroupPath(dir string) string {
	if p := strings.TrimPrefix(dir, cgroupRoot); p != "" && p != dir {
		return p
	}
	if dir == cgroupRoot {
		return "/"
	}
	return dir
}

func writeTop(w io.Writer, r topReport, format string, limit int) error {
	if limit > 0 && len(r.Processes) > limit {
		r.Processes = r.Processes[:limit]
	}
	if format == "json" {
		return writeJSON(w, r)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tCOMMAND\tCGROUP\tDOMAIN\tMERGING\tPROFIT\tADVISED")
	for _, p := range r.Processes {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%d (%s)\n", p.PID, p.Command, p.Cgroup, p.Domain,
			p.MergingPages, humanBytes(p.ProfitBytes), p.AdvisedRanges, humanBytes(int64(p.AdvisedBytes)))
	}
	if len(r.Processes) == 0 {
		fmt.Fprintln(tw, "(no process has memory advised for merging)")
	}
	if r.Unreadable > 0 {
		fmt.Fprintf(tw, "(%d processes not shown: their ksm_stat is readable by their owner and root only)\n", r.Unreadable)
	}
	return tw.Flush()
}

// top shows the processes once, or every interval until ctx ends.
func top(ctx context.Context, w io.Writer, format string, limit int, interval time.Duration) error {
	for {
		r, err := readTop("/proc", domainName)
		if err != nil {
			return err
		}
		if interval > 0 && format == "table" {
			// Home and clear, as top(1) redraws.
			fmt.Fprintf(w, "\x1b[H\x1b[2J%s, every %s (Ctrl-C ends)\n\n", time.Now().Format(time.TimeOnly), interval)
		}
		if err := writeTop(w, r, format, limit); err != nil {
			return err
		}
		if interval <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}
