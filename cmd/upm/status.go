// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/upm-project/upm"
)

// statusReport is what upm status shows; its JSON form is for scripts.
type statusReport struct {
	Backend       string `json:"backend"`
	BackendReason string `json:"backend_reason,omitempty"`
	// Kernel is the running kernel's release (uname -r).
	Kernel string     `json:"kernel"`
	KSM    *ksmStatus `json:"ksm,omitempty"`
	UPM    *upmStatus `json:"upm,omitempty"`
	// SavedBytes is the memory merging saves on this node: pages sharing
	// a merged page beyond the first, UPM's included.
	SavedBytes int64 `json:"saved_bytes"`
}

type ksmStatus struct {
	Run            uint64 `json:"run"`
	PagesToScan    uint64 `json:"pages_to_scan"`
	SleepMillisecs uint64 `json:"sleep_millisecs"`
	// Advisor is the KSM advisor's mode (none, scan-time), empty before
	// Linux 6.9.
	Advisor       string `json:"advisor,omitempty"`
	PagesShared   uint64 `json:"pages_shared"`
	PagesSharing  uint64 `json:"pages_sharing"`
	FullScans     uint64 `json:"full_scans"`
	GeneralProfit int64  `json:"general_profit"`
}

type upmStatus struct {
	Advice       int     `json:"advice"`
	PagesAdvised uint64  `json:"pages_advised"`
	PagesMerged  uint64  `json:"pages_merged"`
	PagesSkipped uint64  `json:"pages_skipped"`
	Candidates   uint64  `json:"candidates"`
	IndexBytes   uint64  `json:"index_bytes"`
	Calls        uint64  `json:"calls"`
	CallSeconds  float64 `json:"call_seconds"`
	// Revisits: looks again after swap-in, copy on write or munmap.
	Revisits      uint64 `json:"revisits"`
	PagesRemerged uint64 `json:"pages_remerged"`
}

func readStatus() (statusReport, error) {
	r := statusReport{Backend: upm.CurrentBackend().String(), Kernel: kernelRelease()}
	if err := upm.BackendReason(); err != nil {
		r.BackendReason = err.Error()
	}
	st, err := upm.ReadSystemStats()
	if errors.Is(err, upm.ErrUnsupported) {
		return r, nil // the backend line says why
	}
	if st.KSM.Present {
		r.KSM = &ksmStatus{
			Run: st.KSM.Run, PagesToScan: st.KSM.PagesToScan, SleepMillisecs: st.KSM.SleepMillisecs,
			PagesShared: st.KSM.PagesShared, PagesSharing: st.KSM.PagesSharing,
			FullScans: st.KSM.FullScans, GeneralProfit: st.KSM.GeneralProfit,
			Advisor: ksmAdvisor("/sys/kernel/mm/ksm/advisor_mode"),
		}
		r.SavedBytes = st.KSM.SavedBytes()
	}
	if st.UPM.Present {
		r.UPM = &upmStatus{
			Advice: st.UPM.Advice, PagesAdvised: st.UPM.PagesAdvised,
			PagesMerged:  st.UPM.PagesMergedStable + st.UPM.PagesMergedNew,
			PagesSkipped: st.UPM.PagesSkipped, Candidates: st.UPM.Candidates,
			IndexBytes: st.UPM.IndexBytes, Calls: st.UPM.Calls, CallSeconds: st.UPM.CallTime.Seconds(),
			Revisits: st.UPM.Revisits, PagesRemerged: st.UPM.PagesRemerged,
		}
	}
	// Files that could not be read: what was read is still shown.
	return r, err
}

func status(w io.Writer, format string) error {
	r, err := readStatus()
	if format == "json" {
		if eerr := writeJSON(w, r); eerr != nil {
			return eerr
		}
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "backend\t%s\n", r.Backend)
	fmt.Fprintf(tw, "kernel\t%s\n", r.Kernel)
	if r.BackendReason != "" {
		fmt.Fprintf(tw, "\t%s\n", r.BackendReason)
	}
	if k := r.KSM; k != nil {
		run := map[uint64]string{0: "stopped", 1: "merging", 2: "unmerging all"}[k.Run]
		fmt.Fprintf(tw, "ksmd\t%s (run=%d), %d pages every %d ms\n", run, k.Run, k.PagesToScan, k.SleepMillisecs)
		if k.Advisor != "" {
			fmt.Fprintf(tw, "KSM advisor\t%s\n", k.Advisor)
		}
		fmt.Fprintf(tw, "KSM pages\t%d shared, %d sharing, %d full scans\n", k.PagesShared, k.PagesSharing, k.FullScans)
		fmt.Fprintf(tw, "KSM general profit\t%s\n", humanBytes(k.GeneralProfit))
	}
	if u := r.UPM; u != nil {
		fmt.Fprintf(tw, "UPM advice\t%d\n", u.Advice)
		fmt.Fprintf(tw, "UPM pages\t%d advised, %d merged, %d skipped, %d candidates\n", u.PagesAdvised, u.PagesMerged, u.PagesSkipped, u.Candidates)
		fmt.Fprintf(tw, "UPM index\t%s\n", humanBytes(int64(u.IndexBytes)))
		fmt.Fprintf(tw, "UPM calls\t%d, %.3f s in all\n", u.Calls, u.CallSeconds)
		fmt.Fprintf(tw, "UPM revisits\t%d, %d pages merged again after swap-in\n", u.Revisits, u.PagesRemerged)
	}
	fmt.Fprintf(tw, "memory saved\t%s\n", humanBytes(r.SavedBytes))
	if ferr := tw.Flush(); ferr != nil {
		return ferr
	}
	return err
}

// humanBytes writes n bytes for a person: 1.5 GiB, 12.0 MiB, 4096 B.
func humanBytes(n int64) string {
	const k = 1024
	abs := max(n, -n)
	switch {
	case abs >= k*k*k:
		return fmt.Sprintf("%.1f GiB", float64(n)/(k*k*k))
	case abs >= k*k:
		return fmt.Sprintf("%.1f MiB", float64(n)/(k*k))
	case abs >= k:
		return fmt.Sprintf("%.1f KiB", float64(n)/k)
	}
	return fmt.Sprintf("%d B", n)
}

// ksmAdvisor reads advisor_mode, whose selected value is in brackets:
// "[none] scan-time".
func ksmAdvisor(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, f := range strings.Fields(string(data)) {
		if strings.HasPrefix(f, "[") && strings.HasSuffix(f, "]") {
			return strings.Trim(f, "[]")
		}
	}
	return ""
}
