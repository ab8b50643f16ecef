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

func TestDomainsWithoutUPM(t *testing.T) {
	if st, _ := upm.ReadSystemStats(); st.UPM.Present {
		t.Skip("the kernel has UPM: the guest tests cover domains")
	}
	var out, errOut bytes.Buffer
	err := run([]string{"domains"}, &out, &errOut)
	require.ErrorIs(t, err, errNoDomains)
	assert.Contains(t, err.Error(), "no UPM")
	assert.Empty(t, out.String())
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
