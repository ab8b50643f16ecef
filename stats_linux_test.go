// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReadProcessStats(t *testing.T) {
	before, err := ReadProcessStats()
	require.NoError(t, err)
	assert.NotZero(t, before.Rss)
	assert.NotZero(t, before.Pss)
	assert.LessOrEqual(t, before.Pss, before.Rss)
	_, statErr := os.Stat(procKSMStat)
	assert.Equal(t, statErr == nil, before.KSMStat)

	requireMerging(t)
	buf := make([]byte, 32*pageSize)
	r, err := Advise(buf)
	require.NoError(t, err)
	defer r.Unadvise()
	after, err := ReadProcessStats()
	require.NoError(t, err)
	assert.Equal(t, before.Regions+1, after.Regions)
	assert.Equal(t, before.AdvisedBytes+int64(r.Len()), after.AdvisedBytes)
}

func TestParseKSMStat(t *testing.T) {
	stat, err := parseKSMStat(strings.NewReader(`ksm_rmap_items 120
ksm_zero_pages 3
ksm_merging_pages 100
ksm_process_profit -4096
ksm_merge_any: no
ksm_mergeable: yes
`))
	require.NoError(t, err)
	assert.Equal(t, map[string]int64{
		"ksm_rmap_items":     120,
		"ksm_zero_pages":     3,
		"ksm_merging_pages":  100,
		"ksm_process_profit": -4096,
	}, stat)
}

func TestReadSystemStats(t *testing.T) {
	s, err := ReadSystemStats()
	_, ksmErr := os.Stat(sysKSMDir)
	_, upmErr := os.Stat(sysUPMDir)
	if ksmErr != nil && upmErr != nil {
		require.ErrorIs(t, err, ErrUnsupported)
		return
	}
	require.NoError(t, err)
	assert.Equal(t, ksmErr == nil, s.KSM.Present)
	assert.Equal(t, upmErr == nil, s.UPM.Present)
	if s.KSM.Present {
		run, err := os.ReadFile(filepath.Join(sysKSMDir, "run"))
		require.NoError(t, err)
		assert.Equal(t, strings.TrimSpace(string(run)), strconv.FormatUint(s.KSM.Run, 10))
		assert.Equal(t, s.KSM.PagesToScan, s.KSM.Values["pages_to_scan"])
		assert.Contains(t, s.KSM.Values, "pages_sharing")
		assert.Equal(t, int64(s.KSM.PagesSharing)*int64(pageSize), s.KSM.SavedBytes())
	}
	if s.UPM.Present {
		advice, err := readAdvice(sysUPMAdvice)
		require.NoError(t, err)
		assert.Equal(t, advice, s.UPM.Advice)
		assert.Equal(t, currentDetection().advice, s.UPM.Advice)
	}
}

func TestReadNumberDir(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"pages_merged_new":      "12\n",
		"call_time_ns":          "1500000\n",
		"general_profit":        "-8192\n",
		"advisor_mode":          "[none] scan-time\n",
		"max_candidates_per_mm": "65536\n",
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, "subdir"), 0o755))

	d, err := readNumberDir(dir)
	require.NoError(t, err)
	assert.Equal(t, map[string]uint64{
		"pages_merged_new":      12,
		"call_time_ns":          1500000,
		"max_candidates_per_mm": 65536,
	}, d.values)
	assert.Equal(t, int64(-8192), d.signed["general_profit"])
	assert.Equal(t, 1500*time.Microsecond, time.Duration(d.values["call_time_ns"]))

	_, err = readNumberDir(filepath.Join(dir, "missing"))
	assert.Error(t, err)
}

func TestReadNumberDirPermission(t *testing.T) {
	// Root reads any file: check as nobody.
	if !runPrivilegesDropped(t, "TestReadNumberDirPermission") {
		return
	}
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pages_merged_new"), []byte("12\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "secret"), []byte("1\n"), 0o000))
	d, err := readNumberDir(dir)
	assert.ErrorContains(t, err, "secret: permission denied")
	assert.Equal(t, uint64(12), d.values["pages_merged_new"], "readable files are lost with one unreadable")
}
