// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm/examples/imageclass/classifier"
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
	// The guest's environment carries the run's own UPM_BENCH_* settings.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "UPM_BENCH_") {
			t.Setenv(k, "")
		}
	}
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

	assert.Equal(t, 1, o.Rounds)
	t.Setenv("UPM_BENCH_COUNT", "3")
	t.Setenv("UPM_BENCH_CONFIGS", "none, upm")
	t.Setenv("UPM_BENCH_STEADY", "3s")
	t.Setenv("UPM_BENCH_FUNCTION", "/bin/imageclass")
	o, err = OptionsFromEnv("/repo/bench")
	require.NoError(t, err)
	assert.Equal(t, []string{"none", "upm"}, o.Configs)
	assert.Equal(t, 3, o.Rounds)
	assert.Equal(t, 3*time.Second, o.Steady)
	assert.Equal(t, "/bin/imageclass", o.Function)
	h := &Harness{Opts: o}
	var names []string
	for _, c := range h.Configs() {
		names = append(names, c.Name)
	}
	assert.Equal(t, []string{"none", "upm"}, names)

	t.Setenv("UPM_BENCH_KSM_WAIT", "soon")
	_, err = OptionsFromEnv("/repo/bench")
	assert.ErrorContains(t, err, "UPM_BENCH_KSM_WAIT")
	t.Setenv("UPM_BENCH_KSM_WAIT", "")
	t.Setenv("UPM_BENCH_COUNT", "0")
	_, err = OptionsFromEnv("/repo/bench")
	assert.ErrorContains(t, err, "UPM_BENCH_COUNT")
	t.Setenv("UPM_BENCH_COUNT", "")
	t.Setenv("UPM_BENCH_CLASSIFY", "all")
	_, err = OptionsFromEnv("/repo/bench")
	assert.ErrorContains(t, err, "UPM_BENCH_CLASSIFY")
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

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	assert.Equal(t, 3.0, percentile(xs, 50))
	assert.Equal(t, 5.0, percentile(xs, 99))
	assert.Equal(t, 5.0, percentile(xs, 100))
	assert.Equal(t, 1.0, percentile(xs, 1))
	assert.True(t, math.IsNaN(percentile(nil, 50)))
	assert.Equal(t, []float64{5, 1, 4, 2, 3}, xs, "the input is left as it was")
}

func TestMergedAt(t *testing.T) {
	tr := mergeTrace{
		t:     []time.Duration{1, 2, 3, 4},
		pages: []int64{0, 50, 96, 100},
	}
	assert.Equal(t, time.Duration(3), mergedAt(tr, 100), "95% of the final pages first at t=3")
	assert.Equal(t, time.Duration(-1), mergedAt(tr, 10), "under 16 pages: nothing merged")
	assert.Equal(t, time.Duration(-1), mergedAt(mergeTrace{}, 100), "no trace")
}

func TestReportWrite(t *testing.T) {
	o := Options{Budget: 1 << 30, Sample: 250 * time.Millisecond, KSMWait: time.Minute}
	mk := func(cfg string, n, round int, memMiB int64, adviseMs int) *Result {
		final := Sample{T: 3 * time.Second, PSS: (memMiB - 2) << 20, CgroupMem: memMiB << 20, Used: (memMiB + 100) << 20}
		r := &Result{
			Config: cfg, N: n, Round: round, Ready: time.Second, UsedBefore: 100 << 20,
			Samples:   []Sample{{T: 0}, {T: time.Second, CgroupMem: memMiB << 21}, final},
			Final:     final,
			Isolation: "test",
		}
		for i := range n {
			r.Instances = append(r.Instances, InstanceResult{
				Name:   fmt.Sprint("inst-", i),
				Start:  time.Duration(i) * 100 * time.Millisecond,
				Ready:  time.Second,
				Merged: time.Duration(i)*100*time.Millisecond + 500*time.Millisecond,
				Load: Ready{LoadStats: classifier.LoadStats{
					Backend: map[string]string{"none": "none", "upm": "upm"}[cfg], AdvisedBytes: 27 << 20,
					AdviseTime: time.Duration(adviseMs*(i+1)) * time.Millisecond,
				}},
				Request: 20 * time.Millisecond,
			})
		}
		return r
	}
	rep := &Report{Opts: o, Configs: GuestConfigs, HashMBps: map[string]float64{"xxhash64 per 4 KiB page": 5000}, Skipped: []string{"upm: needs the UPM kernel"}}
	rep.Results = []*Result{
		mk("none", 1, 1, 40, 1), mk("none", 4, 1, 160, 1), mk("upm", 1, 1, 40, 10), mk("upm", 4, 1, 70, 10),
		mk("none", 1, 2, 40, 1), mk("none", 4, 2, 170, 1), mk("upm", 1, 2, 40, 10), mk("upm", 4, 2, 80, 10),
	}

	f := rep.Figures(rep.Results[3])
	assert.InDelta(t, 70, f.CgroupMiB, 1e-9)
	assert.InDelta(t, 100*90.0/160, f.SavedPct, 1e-9, "against none in the same round, on memory.current")
	assert.InDelta(t, 10, f.MarginalMiB, 1e-9, "(70-40)/3")
	assert.InDelta(t, 1+(1024-40)/10.0, f.Density, 1e-9)
	assert.InDelta(t, 20, f.AdviseP50Ms, 1e-9, "advise times 10, 20, 30, 40 ms")
	assert.InDelta(t, 40, f.AdviseP99Ms, 1e-9)
	assert.InDelta(t, 0.5, f.StartToMergedP50S, 1e-9, "each merged 0.5 s after its own start")
	assert.InDelta(t, 27<<20/1e6/0.020, f.UPMMBps, 1e-6)
	assert.True(t, math.IsNaN(rep.Figures(rep.Results[1]).UPMMBps), "no merge throughput for a backend that does not merge in the advise call")

	dir := t.TempDir()
	require.NoError(t, rep.Write(dir))
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "| upm | 4 | 75.0 (70.0–80.0) |", "the median of two rounds, with their range")
	assert.Contains(t, string(md), "xxhash64 per 4 KiB page: 5000 MB/s")
	assert.Contains(t, string(md), "needs the UPM kernel")
	assert.Contains(t, string(md), "an extrapolation, not a measurement")
	for _, name := range []string{"results.csv", "samples.csv", "instances.csv", "bench.txt", "memory_vs_instances.svg", "memory_vs_instances.png", "memory_over_time.svg", "memory_over_time.png"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if assert.NoError(t, err) {
			assert.NotZero(t, st.Size(), name)
		}
	}
	csv, err := os.ReadFile(filepath.Join(dir, "results.csv"))
	require.NoError(t, err)
	assert.Equal(t, 9, strings.Count(string(csv), "\n"), "a header and a line per round")
	bt, err := os.ReadFile(filepath.Join(dir, "bench.txt"))
	require.NoError(t, err)
	assert.Contains(t, string(bt), "BenchmarkDensity/config=upm/n=4 1 70 MiB-memory.current ")
	assert.Equal(t, 2, strings.Count(string(bt), "BenchmarkDensity/config=upm/n=4 "), "one line per round, for benchstat")
}

// TestInstances starts two real imageclass instances as plain processes, as
// BenchmarkDensity does outside the guest, sends them a request and checks
// what they report.
func TestInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the imageclass command and starts processes")
	}
	o := options(t)
	if o.Function == "" {
		// On a host: build it, as make demo does for the guest.
		if _, err := exec.LookPath("go"); err != nil {
			t.Skip("no imageclass command (UPM_BENCH_FUNCTION) and no go to build one")
		}
		o.Function = filepath.Join(t.TempDir(), "imageclass")
		build := exec.Command("go", "build", "-o", o.Function, "github.com/upm-project/upm/examples/imageclass")
		build.Stderr = os.Stderr
		require.NoError(t, build.Run())
	}
	o.InGuest = false
	o.Sample = 100 * time.Millisecond
	o.Settle = 300 * time.Millisecond
	o.KSMWait = 300 * time.Millisecond
	o.Steady = 0
	h, err := NewHarness(o)
	require.NoError(t, err)
	defer h.Close()

	for _, cfg := range h.Configs() {
		if reason := h.SkipReason(cfg); reason != "" {
			t.Logf("%s: %s", cfg.Name, reason)
			continue
		}
		r, err := h.Measure(cfg, 2, 1)
		require.NoError(t, err, cfg.Name)
		require.Len(t, r.Instances, 2)
		for _, in := range r.Instances {
			assert.True(t, in.Load.Ready)
			assert.EqualValues(t, 6910171, in.Load.Params)
			assert.Positive(t, in.Request, "the instance answered the request (checked: %q)", sampleExpression)
			assert.GreaterOrEqual(t, in.Ready, in.Start)
			if cfg.Backend == "none" {
				assert.Zero(t, in.Load.AdvisedBytes)
				assert.Equal(t, "none", in.Load.Backend)
			} else {
				assert.Positive(t, in.Load.AdvisedBytes)
			}
		}
		assert.Greater(t, r.Final.PSS, int64(2*27<<20), "two instances hold their weights")
		assert.NotEmpty(t, r.Samples)
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
