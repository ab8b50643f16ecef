// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/upm-project/upm"
)

// domainRow is one merge domain as upm domains shows it.
type domainRow struct {
	Domain       string `json:"domain"` // the name, or "cgroup:ID"
	Name         string `json:"name,omitempty"`
	CgroupID     uint64 `json:"cgroup_id,omitempty"`
	Processes    uint64 `json:"processes"`
	PagesShared  uint64 `json:"pages_shared"`
	PagesSharing uint64 `json:"pages_sharing"`
	Candidates   uint64 `json:"candidates"`
	IndexBytes   uint64 `json:"index_bytes"`
	SavedBytes   int64  `json:"saved_bytes"`
}

// errNoDomains says why there are no per-domain figures to show.
var errNoDomains = errors.New("no per-domain statistics")

func readDomains() ([]domainRow, error) {
	st, err := upm.ReadSystemStats()
	if err != nil && !st.UPM.Present {
		return nil, err
	}
	if !st.UPM.Present {
		return nil, fmt.Errorf("%w: the kernel has no UPM (stock KSM does not know merge domains)", errNoDomains)
	}
	if !st.UPM.DomainsReadable {
		return nil, fmt.Errorf("%w: /sys/kernel/mm/upm/domains is readable by root only (domain names are tenants' data), or this UPM kernel has no such file", errNoDomains)
	}
	rows := []domainRow{}
	for _, d := range st.UPM.Domains {
		id := d.Name
		if id == "" {
			id = fmt.Sprintf("cgroup:%d", d.CgroupID)
		}
		rows = append(rows, domainRow{Domain: id, Name: d.Name, CgroupID: d.CgroupID, Processes: d.Processes,
			PagesShared: d.PagesShared, PagesSharing: d.PagesSharing, Candidates: d.Candidates,
			IndexBytes: d.IndexBytes, SavedBytes: d.SavedBytes()})
	}
	return rows, err
}

func domains(w io.Writer, format string) error {
	rows, err := readDomains()
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
