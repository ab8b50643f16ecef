// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/upm-project/upm"
)

// domainRow is one merge domain as upm domains shows it. On stock KSM,
// which has no merge domains, a row is a cgroup, summed over its processes
// from /proc (Source "ksm-cgroup").
type domainRow struct {
	Source       string `json:"source"` // "upm", or "ksm-cgroup"
	Domain       string `json:"domain"` // the name, or "cgroup:ID" ("cgroup:/path" on KSM)
	Name         string `json:"name,omitempty"`
	CgroupID     uint64 `json:"cgroup_id,omitempty"`
	Processes    uint64 `json:"processes"`
	PagesShared  uint64 `json:"pages_shared"`
	PagesSharing uint64 `json:"pages_sharing"`
	Candidates   uint64 `json:"candidates"`
	IndexBytes   uint64 `json:"index_bytes"`
	// MergingPages is the sum of the processes' ksm_merging_pages (KSM).
	MergingPages uint64 `json:"merging_pages,omitempty"`
	// SavedBytes: the domain's pages sharing times the page size (UPM), or
	// the sum of the processes' ksm_process_profit (KSM).
	SavedBytes int64 `json:"saved_bytes"`
}

// ksmCgroupRows sums, per cgroup, the processes top shows: stock KSM's
// closest thing to per-domain figures.
func ksmCgroupRows(r topReport) []domainRow {
	byCgroup := map[string]*domainRow{}
	var order []string
	for _, p := range r.Processes {
		row, ok := byCgroup[p.Cgroup]
		if !ok {
			row = &domainRow{Source: "ksm-cgroup", Domain: "cgroup:" + p.Cgroup}
			byCgroup[p.Cgroup] = row
			order = append(order, p.Cgroup)
		}
		row.Processes++
		row.MergingPages += p.MergingPages
		row.SavedBytes += p.ProfitBytes
	}
	rows := []domainRow{}
	for _, c := range order {
		rows = append(rows, *byCgroup[c])
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].SavedBytes > rows[j].SavedBytes })
	return rows
}

// errNoDomains says why there are no per-domain figures to show.
var errNoDomains = errors.New("no per-domain statistics")

// readDomains returns the rows and where they come from: "upm", or
// "ksm-cgroup" on stock KSM.
func readDomains() ([]domainRow, string, error) {
	st, err := upm.ReadSystemStats()
	if err != nil && !st.UPM.Present {
		return nil, "", err
	}
	if !st.UPM.Present && st.KSM.Present {
		// Stock KSM knows no merge domains: per cgroup, from /proc.
		top, terr := readTop("/proc", nil)
		if terr != nil {
			return nil, "", terr
		}
		return ksmCgroupRows(top), "ksm-cgroup", nil
	}
	if !st.UPM.Present {
		return nil, "", fmt.Errorf("%w: the kernel has neither UPM nor KSM", errNoDomains)
	}
	if !st.UPM.DomainsReadable {
		return nil, "", fmt.Errorf("%w: /sys/kernel/mm/upm/domains is readable by root only (domain names are tenants' data), or this UPM kernel has no such file", errNoDomains)
	}
	rows := []domainRow{}
	for _, d := range st.UPM.Domains {
		id := d.Name
		if id == "" {
			id = fmt.Sprintf("cgroup:%d", d.CgroupID)
		}
		rows = append(rows, domainRow{Source: "upm", Domain: id, Name: d.Name, CgroupID: d.CgroupID, Processes: d.Processes,
			PagesShared: d.PagesShared, PagesSharing: d.PagesSharing, Candidates: d.Candidates,
			IndexBytes: d.IndexBytes, SavedBytes: d.SavedBytes()})
	}
	return rows, "upm", err
}

func domains(w io.Writer, format string) error {
	rows, source, err := readDomains()
	if rows == nil {
		return err
	}
	if format == "json" {
		if eerr := writeJSON(w, rows); eerr != nil {
			return eerr
		}
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	if source == "ksm-cgroup" {
		fmt.Fprintln(tw, "CGROUP (stock KSM: no merge domains)\tPROCESSES\tMERGING PAGES\tPROFIT\t")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t\n", r.Domain, r.Processes, r.MergingPages, humanBytes(r.SavedBytes))
		}
		if ferr := tw.Flush(); ferr != nil {
			return ferr
		}
		return err
	}
	fmt.Fprintln(tw, "DOMAIN\tPROCESSES\tPAGES SHARED\tPAGES SHARING\tCANDIDATES\tINDEX\tSAVED\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t\n", r.Domain, r.Processes, r.PagesShared, r.PagesSharing,
			r.Candidates, humanBytes(int64(r.IndexBytes)), humanBytes(r.SavedBytes))
	}
	if ferr := tw.Flush(); ferr != nil {
		return ferr
	}
	return err
}

// cgroupRoot is where the cgroup v2 hierarchy is mounted.
var cgroupRoot = upm.CgroupV2Root()

// cgroupDir turns a cgroup as an operator names it (/kubepods/pod1, as
// /proc/PID/cgroup shows it, or /sys/fs/cgroup/kubepods/pod1) into its
// directory, which must exist.
func cgroupDir(root, arg string) (string, error) {
	dir := filepath.Clean(arg)
	if dir != root && !strings.HasPrefix(dir, root+"/") {
		dir = filepath.Join(root, dir)
	}
	fi, err := os.Stat(filepath.Join(dir, "cgroup.procs"))
	if err != nil || fi.IsDir() {
		return "", fmt.Errorf("%s: no such cgroup (want a cgroup v2 path such as /kubepods/pod1, or a directory under %s)", arg, root)
	}
	return dir, nil
}

// markCommand runs upm domains mark CGROUP NAME and upm domains unmark CGROUP.
func markCommand(verb string, args []string, stdout, stderr io.Writer) error {
	want := 2
	if verb == "unmark" {
		want = 1
	}
	if len(args) != want {
		if verb == "mark" {
			fmt.Fprintf(stderr, "usage: upm domains mark CGROUP NAME\n")
		} else {
			fmt.Fprintf(stderr, "usage: upm domains unmark CGROUP\n")
		}
		return errUsage
	}
	dir, err := cgroupDir(cgroupRoot, args[0])
	if err != nil {
		return err
	}
	if verb == "unmark" {
		if err := upm.UnmarkMergeDomain(dir); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "unmarked %s: its processes are in their own cgroup's domain from their next advise (or an ancestor's mark)\n", dir)
		return nil
	}
	if err := upm.CheckMergeDomainName(args[1]); err != nil {
		fmt.Fprintf(stderr, "upm domains mark: %v\n", err)
		return errUsage
	}
	if err := upm.MarkMergeDomain(dir, args[1]); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "marked %s as merge domain %q: its processes share with every cgroup so marked from their next advise\n", dir, args[1])
	return nil
}
