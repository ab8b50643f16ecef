// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
)

func codes(fs []nodeFinding) map[string][]int {
	m := map[string][]int{}
	for _, f := range fs {
		m[f.Code] = append(m[f.Code], f.PIDs...)
	}
	return m
}

func TestNodeFindingsUPM(t *testing.T) {
	st := upm.SystemStats{UPM: upm.UPMStats{Present: true, Values: map[string]uint64{"max_pages_per_process": 1000}}}
	r := topReport{Processes: []procRow{
		// Three instances, each in its own cgroup and no domain named.
		{PID: 10, Command: "imageclass", Domain: "cgroup:/pod-a", RmapItems: 100},
		{PID: 11, Command: "imageclass", Domain: "cgroup:/pod-b", RmapItems: 100},
		{PID: 12, Command: "imageclass", Domain: "cgroup:/pod-c", RmapItems: 950},
		// Two instances that share a named domain: fine.
		{PID: 20, Command: "resize", Domain: "fn/resize", RmapItems: 100},
		{PID: 21, Command: "resize", Domain: "fn/resize", RmapItems: 100},
		// Advised through KSM only (no rmap_items yet): not UPM's case.
		{PID: 30, Command: "other", Domain: "cgroup:/x"},
		{PID: 31, Command: "other", Domain: "cgroup:/y"},
		{PID: 40, Command: "hidden", Domain: "?", RmapItems: 1},
	}}
	got := codes(nodeFindings(r, st))
	assert.Equal(t, []int{10, 11, 12}, got[codeAloneInDomain])
	assert.Equal(t, []int{12}, got[codeNearLimit])
	assert.Contains(t, got, codeDomainsUnknown)
	assert.NotContains(t, got, codeScanTime, "UPM merges at advise time")

	// Once the domain is given, the finding goes.
	for i := range r.Processes[:3] {
		r.Processes[i].Domain = "fn/imageclass"
	}
	assert.NotContains(t, codes(nodeFindings(r, st)), codeAloneInDomain)
}

func TestNodeFindingsKSM(t *testing.T) {
	st := upm.SystemStats{KSM: upm.KSMStats{Present: true, Run: 1, PagesToScan: 100, SleepMillisecs: 20}}
	page := uint64(os.Getpagesize())
	r := topReport{Processes: []procRow{{PID: 1, AdvisedBytes: 100_000 * page}}, Unreadable: 3}
	got := codes(nodeFindings(r, st))
	assert.NotContains(t, got, codeScanTime, "100000 pages at 5000 pages/s: 20 s a scan")
	assert.Contains(t, got, codeUnreadable)

	r.Processes[0].AdvisedBytes = 1_000_000 * page // 200 s a scan
	fs := nodeFindings(r, st)
	require.Contains(t, codes(fs), codeScanTime)
	assert.Contains(t, fs[0].Fact, "about 200 s per scan")
}

func TestDoctorJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	require.NoError(t, run([]string{"doctor", "-o", "json"}, &out, &errOut), errOut.String())
	var r struct{ Findings []nodeFinding }
	require.NoError(t, json.Unmarshal(out.Bytes(), &r), out.String())
	require.NotEmpty(t, r.Findings, "the backend is always a finding")
	d := upm.Diagnose()
	require.NotEmpty(t, d.Findings)
	assert.Equal(t, d.Findings[0].Code, r.Findings[0].Code, "the library's findings about the kernel come first")
}
