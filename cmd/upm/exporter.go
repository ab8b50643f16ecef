// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/procfs"

	"github.com/upm-project/upm"
)

// nodeCollector reads the kernel's figures at each scrape: nothing is
// cached, so what a scrape shows is what the kernel counted then.
type nodeCollector struct {
	savedBytes, ksmShared, ksmSharing, ksmUnshared, ksmFullScans, ksmdCPU  *prometheus.Desc
	upmAdvised, upmMerged, upmSkipped, upmCandidates, upmIndexBytes        *prometheus.Desc
	upmCalls, upmCallSeconds, upmRevisits                                  *prometheus.Desc
	domProcesses, domShared, domSharing, domCandidates, domIndex, domSaved *prometheus.Desc
	up, domainsReadable                                                    *prometheus.Desc
}

func newNodeCollector() *nodeCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &nodeCollector{
		up:              d("upm_node_stats_up", "1 if the kernel's KSM or UPM figures could be read at this scrape."),
		domainsReadable: d("upm_domains_readable", "1 if the per-domain figures could be read (they are root's only: domain names are tenants' data); 0 leaves the upm_domain_* series out."),
		savedBytes:      d("upm_node_saved_bytes", "Memory saved on the node by merged pages: KSM pages_sharing times the page size (UPM's merged pages are KSM pages)."),
		ksmShared:       d("ksm_pages_shared", "KSM pages in use (/sys/kernel/mm/ksm/pages_shared), UPM's included."),
		ksmSharing:      d("ksm_pages_sharing", "Further mappings of KSM pages: pages saved (/sys/kernel/mm/ksm/pages_sharing)."),
		ksmUnshared:     d("ksm_pages_unshared", "Pages waiting for a twin: ksmd's unstable tree and UPM's candidates."),
		ksmFullScans:    d("ksm_full_scans_total", "Full scans of advised memory by ksmd."),
		ksmdCPU:         d("ksm_ksmd_cpu_seconds_total", "CPU time the ksmd kernel thread has used."),
		upmAdvised:      d("upm_pages_advised_total", "Present pages MADV_UPM_MERGE looked at."),
		upmMerged:       d("upm_pages_merged_total", "Pages MADV_UPM_MERGE merged: into an existing KSM page (stable) or in pairs into a new one (new), and again after a swap round trip (remerged).", "how"),
		upmSkipped:      d("upm_pages_skipped_total", "Pages that could not be merged when advised (locked or pinned)."),
		upmCandidates:   d("upm_candidates", "Advised pages waiting in UPM's index for a twin."),
		upmIndexBytes:   d("upm_index_bytes", "Memory of UPM's merge domains and their indexes."),
		upmCalls:        d("upm_calls_total", "MADV_UPM_MERGE calls."),
		upmCallSeconds:  d("upm_call_seconds_total", "Time spent in MADV_UPM_MERGE calls, in the advising processes."),
		upmRevisits:     d("upm_revisits_total", "Times UPM looked at a process's merged memory again after swap-in, copy-on-write or unmap."),
		domProcesses:    d("upm_domain_processes", "Processes whose last advise was in the merge domain.", "domain"),
		domShared:       d("upm_domain_pages_shared", "KSM pages of the merge domain.", "domain"),
		domSharing:      d("upm_domain_pages_sharing", "Further mappings of the merge domain's KSM pages.", "domain"),
		domCandidates:   d("upm_domain_candidates", "Candidates in the merge domain's index.", "domain"),
		domIndex:        d("upm_domain_index_bytes", "Memory of the merge domain's index and candidates.", "domain"),
		domSaved:        d("upm_domain_saved_bytes", "Memory the merge domain's merged pages save.", "domain"),
	}
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	n := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	st, err := upm.ReadSystemStats()
	if err != nil && !st.KSM.Present && !st.UPM.Present {
		g(c.up, 0)
		return
	}
	g(c.up, 1)
	if k := st.KSM; k.Present {
		g(c.savedBytes, float64(k.SavedBytes()))
		g(c.ksmShared, float64(k.PagesShared))
		g(c.ksmSharing, float64(k.PagesSharing))
		g(c.ksmUnshared, float64(k.PagesUnshared))
		n(c.ksmFullScans, float64(k.FullScans))
		if cpu, ok := ksmdCPU(); ok {
			n(c.ksmdCPU, cpu.Seconds())
		}
	}
	if u := st.UPM; u.Present {
		n(c.upmAdvised, float64(u.PagesAdvised))
		n(c.upmMerged, float64(u.PagesMergedStable), "stable")
		n(c.upmMerged, float64(u.PagesMergedNew), "new")
		n(c.upmMerged, float64(u.PagesRemerged), "remerged")
		n(c.upmSkipped, float64(u.PagesSkipped))
		g(c.upmCandidates, float64(u.Candidates))
		g(c.upmIndexBytes, float64(u.IndexBytes))
		n(c.upmCalls, float64(u.Calls))
		n(c.upmCallSeconds, u.CallTime.Seconds())
		n(c.upmRevisits, float64(u.Revisits))
		readable := 0.0
		if u.DomainsReadable {
			readable = 1
		}
		g(c.domainsReadable, readable)
		for _, d := range u.Domains {
			id := d.Name
			if id == "" {
				id = "cgroup:" + strconv.FormatUint(d.CgroupID, 10)
			}
			g(c.domProcesses, float64(d.Processes), id)
			g(c.domShared, float64(d.PagesShared), id)
			g(c.domSharing, float64(d.PagesSharing), id)
			g(c.domCandidates, float64(d.Candidates), id)
			g(c.domIndex, float64(d.IndexBytes), id)
			g(c.domSaved, float64(d.SavedBytes()), id)
		}
	}
}

// ksmdCPU returns the CPU time the ksmd kernel thread has used.
func ksmdCPU() (time.Duration, bool) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, false
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return 0, false
	}
	for _, p := range procs {
		if comm, err := p.Comm(); err == nil && comm == "ksmd" {
			if st, err := p.Stat(); err == nil {
				return time.Duration(st.CPUTime() * float64(time.Second)), true
			}
		}
	}
	return 0, false
}

// metricsHandler serves the node's metrics in the Prometheus formats.
func metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newNodeCollector())
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// exporter serves /metrics on listen until ctx ends; ready, if not nil,
// gets the address it listens on.
func exporter(ctx context.Context, stderr io.Writer, listen string, ready func(net.Addr)) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metricsHandler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "upm exporter: metrics at /metrics")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stderr, "upm exporter: serving http://%s/metrics\n", ln.Addr())
	if ready != nil {
		ready(ln.Addr())
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil {
			return err
		}
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}
