// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseCounts(t *testing.T) {
	n, err := parseCounts("16, 1,4,4")
	require.NoError(t, err)
	assert.Equal(t, []int{1, 4, 16}, n)
	for _, bad := range []string{"", "0", "1,x", "-2"} {
		_, err := parseCounts(bad)
		assert.Error(t, err, bad)
	}
}

func TestOptionsFromEnv(t *testing.T) {
	t.Setenv("VMTEST_IN_GUEST", "")
	t.Setenv("UPM_MODEL_DIR", "")
	t.Setenv("UPM_RESULTS_DIR", "")
	t.Setenv("UPM_BENCH_N", "")
	t.Setenv("UPM_BENCH_KSM_WAIT", "")
	o, err := OptionsFromEnv("/repo/bench")
	require.NoError(t, err)
	assert.False(t, o.InGuest)
	assert.Equal(t, "/repo/build/model", o.ModelDir)
	assert.Equal(t, "/repo/build/bench-results", o.ResultsDir)
	assert.Equal(t, []int{1, 4}, o.N, "short on a host")

	t.Setenv("VMTEST_IN_GUEST", "1")
	o, err = OptionsFromEnv("/repo/bench")
	require.NoError(t, err)
	assert.Equal(t, []int{1, 2, 4, 8, 16}, o.N)
	assert.Equal(t, 120*time.Second, o.KSMWait)

	t.Setenv("UPM_BENCH_N", "16")
	t.Setenv("UPM_BENCH_KSM_WAIT", "30s")
	t.Setenv("UPM_MODEL_DIR", "/model")
	t.Setenv("UPM_BENCH_BUDGET_MIB", "512")
	o, err = OptionsFromEnv("/repo/bench")
	require.NoError(t, err)
	assert.Equal(t, []int{16}, o.N)
	assert.Equal(t, 30*time.Second, o.KSMWait)
	assert.Equal(t, "/model", o.ModelDir)
	assert.EqualValues(t, 512<<20, o.Budget)

	t.Setenv("UPM_BENCH_KSM_WAIT", "soon")
	_, err = OptionsFromEnv("/repo/bench")
	assert.ErrorContains(t, err, "UPM_BENCH_KSM_WAIT")
}

func TestComputeDedup(t *testing.T) {
	s := func(sec float64, pssMiB int64) Sample {
		return Sample{T: time.Duration(sec * float64(time.Second)), PSS: pssMiB << 20}
	}
	r := &Result{Ready: 2 * time.Second, Samples: []Sample{
		s(0, 50), s(1, 100), s(2, 100), s(3, 90), s(4, 62), s(5, 61), s(6, 60),
	}}
	r.Final = r.Samples[len(r.Samples)-1]
	r.ComputeDedup(100 << 20)
	assert.True(t, r.DedupOK)
	// Saving 40 MiB at the end; 95% of it (38) first at t=4 (38 MiB).
	assert.Equal(t, 2*time.Second, r.DedupTime)

	// Nothing saved: nothing to time.
	r = &Result{Ready: time.Second, Samples: []Sample{s(1, 100), s(2, 100)}}
	r.Final = r.Samples[1]
	r.ComputeDedup(100 << 20)
	assert.False(t, r.DedupOK)

	// Merged before ready (UPM): zero.
	r = &Result{Ready: time.Second, Samples: []Sample{s(0.5, 80), s(1, 60), s(2, 60)}}
	r.Final = r.Samples[2]
	r.ComputeDedup(100 << 20)
	assert.True(t, r.DedupOK)
	assert.Zero(t, r.DedupTime)
}

func TestReportWrite(t *testing.T) {
	o := Options{Budget: 1 << 30, Sample: 250 * time.Millisecond, KSMWait: time.Minute}
	mk := func(cfg string, n int, pssMiB int64) *Result {
		final := Sample{T: 3 * time.Second, PSS: pssMiB << 20, Used: (pssMiB + 100) << 20}
		return &Result{
			Config: cfg, N: n, Ready: time.Second, UsedBefore: 100 << 20,
			Samples:     []Sample{{T: 0}, {T: time.Second, PSS: pssMiB << 21}, final},
			Final:       final,
			AdviseTimes: []time.Duration{time.Millisecond, 3 * time.Millisecond},
			Advised:     27 << 20,
			Isolation:   "test",
		}
	}
	rep := &Report{Opts: o, HashMBps: map[string]float64{"maphash": 5000}, Skipped: []string{"upm: needs the UPM kernel"}}
	rep.Results = []*Result{mk("none", 1, 40), mk("none", 4, 160), mk("upm", 1, 40), mk("upm", 4, 70)}

	f := rep.Figures(rep.Results[3])
	assert.InDelta(t, 70, f.PSSMiB, 1e-9)
	assert.InDelta(t, 100*90.0/160, f.SavedPct, 1e-9)
	assert.InDelta(t, 10, f.MarginalMiB, 1e-9, "(70-40)/3")
	assert.InDelta(t, 1+(1024-40)/10.0, f.Density, 1e-9)
	assert.InDelta(t, 2, f.AdviseMs, 1e-9)
	assert.InDelta(t, 27<<20/1e6/0.002, f.MergeMBps, 1e-6)

	dir := t.TempDir()
	require.NoError(t, rep.Write(dir))
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "| upm | 4 | 70.0 |")
	assert.Contains(t, string(md), "maphash: 5000 MB/s")
	assert.Contains(t, string(md), "needs the UPM kernel")
	for _, name := range []string{"results.csv", "samples.csv", "instances.csv", "memory_vs_instances.svg", "memory_vs_instances.png", "memory_over_time.svg", "memory_over_time.png"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if assert.NoError(t, err) {
			assert.NotZero(t, st.Size(), name)
		}
	}
	csv, err := os.ReadFile(filepath.Join(dir, "results.csv"))
	require.NoError(t, err)
	assert.Equal(t, 5, strings.Count(string(csv), "\n"))
}

// TestInstances starts two instances on this host, as BenchmarkDensity does
// outside the guest, and checks what they report.
func TestInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	o := options(t)
	o.InGuest = false
	o.Sample = 100 * time.Millisecond
	o.Settle = 300 * time.Millisecond
	o.KSMWait = 300 * time.Millisecond
	exe, err := os.Executable()
	require.NoError(t, err)
	h, err := NewHarness(o, exe)
	require.NoError(t, err)
	defer h.Close()

	for _, cfg := range HostConfigs {
		if reason := h.SkipReason(cfg); reason != "" {
			t.Logf("%s: %s", cfg.Name, reason)
			continue
		}
		r, err := h.Measure(cfg, 2)
		require.NoError(t, err, cfg.Name)
		require.Len(t, r.Instances, 2)
		for _, in := range r.Instances {
			assert.True(t, in.Ready)
			assert.Equal(t, "sad", in.Result, "the instance classified sample2.jpg's face")
			assert.EqualValues(t, 6910171, in.Params)
			if cfg.Backend == "none" {
				assert.Zero(t, in.AdvisedBytes)
				assert.Equal(t, "none", in.Backend)
			} else {
				assert.Equal(t, in.DecodedBytes, in.AdvisedBytes)
			}
		}
		assert.Greater(t, r.Final.PSS, int64(2*27<<20), "two instances hold their weights")
		assert.NotEmpty(t, r.Samples)
		assert.GreaterOrEqual(t, r.Ready, time.Duration(0))
	}
}

// TestKSMSettings runs the KSM knob handling on a fake sysfs directory.
func TestKSMSettings(t *testing.T) {
	dir := t.TempDir()
	old := ksmDir
	ksmDir = dir
	t.Cleanup(func() { ksmDir = old })
	files := map[string]string{
		"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20",
		"advisor_mode": "none [scan-time]", "pages_shared": "0", "pages_sharing": "0", "full_scans": "7",
	}
	for k, v := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, k), []byte(v+"\n"), 0o644))
	}
	read := func(k string) string {
		b, err := os.ReadFile(filepath.Join(dir, k))
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	}

	saved := saveKSM()
	assert.Equal(t, "none [scan-time]", saved["advisor_mode"])

	require.NoError(t, applyKSM(ksmSettings{Run: 1, PagesToScan: 20000, SleepMillisecs: 0}))
	assert.Equal(t, "1", read("run"))
	assert.Equal(t, "20000", read("pages_to_scan"))
	assert.Equal(t, "0", read("sleep_millisecs"))
	assert.Equal(t, "none", read("advisor_mode"))

	require.NoError(t, unmergeKSM(time.Second))
	assert.Equal(t, "0", read("run"), "stopped after unmerging")
	assert.EqualValues(t, 7, readKSMCounters().FullScans)

	require.NoError(t, restoreKSM(saved))
	assert.Equal(t, "0", read("run"))
	assert.Equal(t, "100", read("pages_to_scan"))
	assert.Equal(t, "20", read("sleep_millisecs"))
	assert.Equal(t, "scan-time", read("advisor_mode"))

	// Merged pages that never go: unmerging times out.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "pages_sharing"), []byte("5"), 0o644))
	assert.ErrorContains(t, unmergeKSM(200*time.Millisecond), "still has")
}
