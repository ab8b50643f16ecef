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

	d, err := readNumberDir(dir, "")
	require.NoError(t, err)
	assert.Equal(t, map[string]uint64{
		"pages_merged_new":      12,
		"call_time_ns":          1500000,
		"max_candidates_per_mm": 65536,
	}, d.values)
	assert.Equal(t, int64(-8192), d.signed["general_profit"])
	assert.Equal(t, 1500*time.Microsecond, time.Duration(d.values["call_time_ns"]))

	_, err = readNumberDir(filepath.Join(dir, "missing"), "")
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
	d, err := readNumberDir(dir, "")
	assert.ErrorContains(t, err, "secret: permission denied")
	assert.Equal(t, uint64(12), d.values["pages_merged_new"], "readable files are lost with one unreadable")
}

func TestReadNumberDirSkips(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "candidates"), []byte("3\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "domains"), []byte("7\n"), 0o644))
	d, err := readNumberDir(dir, "domains")
	require.NoError(t, err)
	assert.Equal(t, map[string]uint64{"candidates": 3}, d.values)
}

func TestParseDomainStats(t *testing.T) {
	text := "# domain processes pages_shared pages_sharing candidates index_bytes\n" +
		"name:default/imageclass 16 9000 135000 2 8512\n" +
		"cgroup:4242 1 0 0 12 9024\n"
	domains, err := parseDomainStats(text)
	require.NoError(t, err)
	assert.Equal(t, []DomainStats{
		{Name: "default/imageclass", Processes: 16, PagesShared: 9000, PagesSharing: 135000, Candidates: 2, IndexBytes: 8512},
		{CgroupID: 4242, Processes: 1, Candidates: 12, IndexBytes: 9024},
	}, domains)
	assert.Equal(t, int64(135000*4096), domains[0].SavedBytes())

	empty, err := parseDomainStats("# domain processes pages_shared pages_sharing candidates index_bytes\n")
	require.NoError(t, err)
	assert.Empty(t, empty)
	assert.NotNil(t, empty, "no domains is an answer, not a missing one")

	for _, bad := range []string{
		"name:fn 1 2 3 4\n",                      // a field short
		"name:fn 1 2 3 4 5 6\n",                  // one too many
		"tenant:fn 1 2 3 4 5\n",                  // neither name: nor cgroup:
		"cgroup:x 1 2 3 4 5\n",                   // not a number
		"name:two words 1 2 3 4 5\n",             // not a name
		"name:fn 1 2 -3 4 5\n",                   // negative
		"name:fn 1 2 3 4 99999999999999999999\n", // overflow
	} {
		_, err := parseDomainStats(bad)
		assert.Error(t, err, "%q", bad)
	}
}
