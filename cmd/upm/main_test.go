// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
)

func TestStatusJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	require.NoError(t, run([]string{"status", "-o", "json"}, &out, &errOut), errOut.String())
	var r statusReport
	require.NoError(t, json.Unmarshal(out.Bytes(), &r), out.String())
	assert.Equal(t, upm.CurrentBackend().String(), r.Backend)
	st, err := upm.ReadSystemStats()
	if err == nil {
		assert.Equal(t, st.KSM.Present, r.KSM != nil, "KSM settings shown when the kernel has KSM")
		assert.Equal(t, st.UPM.Present, r.UPM != nil)
	}
	if r.KSM != nil {
		assert.Equal(t, st.KSM.SleepMillisecs, r.KSM.SleepMillisecs)
	}
}

func TestStatusTable(t *testing.T) {
	var out, errOut bytes.Buffer
	require.NoError(t, run([]string{"status"}, &out, &errOut), errOut.String())
	assert.Contains(t, out.String(), "backend")
	assert.Contains(t, out.String(), "memory saved")
}

// TestDomainsWithoutUPM: on stock KSM, upm domains sums per cgroup what
// /proc says; without KSM either it says there is nothing to show.
func TestDomainsWithoutUPM(t *testing.T) {
	st, _ := upm.ReadSystemStats()
	if st.UPM.Present {
		t.Skip("the kernel has UPM: the guest tests cover domains")
	}
	var out, errOut bytes.Buffer
	err := run([]string{"domains", "-o", "json"}, &out, &errOut)
	if !st.KSM.Present {
		require.ErrorIs(t, err, errNoDomains)
		return
	}
	require.NoError(t, err)
	var rows []domainRow
	require.NoError(t, json.Unmarshal(out.Bytes(), &rows), out.String())
	for _, r := range rows {
		assert.Equal(t, "ksm-cgroup", r.Source)
	}
	out.Reset()
	require.NoError(t, run([]string{"domains"}, &out, &errOut))
	assert.Contains(t, out.String(), "stock KSM")
}

func TestKSMCgroupRows(t *testing.T) {
	rows := ksmCgroupRows(topReport{Processes: []procRow{
		{PID: 1, Cgroup: "/a", MergingPages: 10, ProfitBytes: 100},
		{PID: 2, Cgroup: "/b", MergingPages: 50, ProfitBytes: 900},
		{PID: 3, Cgroup: "/a", MergingPages: 5, ProfitBytes: 50},
	}})
	require.Len(t, rows, 2)
	assert.Equal(t, domainRow{Source: "ksm-cgroup", Domain: "cgroup:/b", Processes: 1, MergingPages: 50, SavedBytes: 900}, rows[0])
	assert.Equal(t, domainRow{Source: "ksm-cgroup", Domain: "cgroup:/a", Processes: 2, MergingPages: 15, SavedBytes: 150}, rows[1])
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"bogus"}, {"status", "-o", "yaml"}, {"status", "extra"}, {"domains", "-x"}, {"top", "-n", "-1"}, {"top", "-w", "x"},
		{"domains", "mark"}, {"domains", "mark", "/"}, {"domains", "unmark"}, {"domains", "unmark", "a", "b"}} {
		var out, errOut bytes.Buffer
		err := run(args, &out, &errOut)
		assert.True(t, errors.Is(err, errUsage), "%q: %v", args, err)
		assert.NotEmpty(t, errOut.String(), "%q says what is wrong", args)
	}
	var out bytes.Buffer
	require.NoError(t, run([]string{"help"}, &out, &out))
	assert.Contains(t, out.String(), "upm status")
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 4096: "4.0 KiB", -8192: "-8.0 KiB", 12 << 20: "12.0 MiB", 3 << 30: "3.0 GiB"} {
		assert.Equal(t, want, humanBytes(n), "%d", n)
	}
}
