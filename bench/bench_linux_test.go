// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"flag"
	"fmt"
	"hash/maphash"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/upm-project/upm/examples/imageclass/classifier"
)

// report collects the results of this run; TestMain writes it.
var report *Report

func TestMain(m *testing.M) {
	if name := os.Getenv(InstanceEnv); name != "" {
		os.Exit(RunInstance(name, os.Getenv("UPM_MODEL_DIR"), os.Stdin, os.Stdout))
	}
	// The harness itself advises nothing; each instance gets its own
	// UPM_BACKEND.
	os.Setenv("UPM_BACKEND", "none")
	// In the guest the rig cannot pass -test.timeout (or -test.benchtime);
	// it passes them through the environment.
	flag.Parse()
	if v := os.Getenv("UPM_GO_TEST_TIMEOUT"); v != "" {
		_ = flag.Set("test.timeout", v)
	}
	if flag.Lookup("test.benchtime").Value.String() == "1s" {
		_ = flag.Set("test.benchtime", "1x")
	}
	code := m.Run()
	if report != nil && (len(report.Results) > 0 || len(report.HashMBps) > 0) {
		if err := report.Write(report.Opts.ResultsDir); err != nil {
			fmt.Fprintf(os.Stderr, "bench: writing results: %v\n", err)
			code = 1
		} else {
			fmt.Printf("bench: results in %s\n", report.Opts.ResultsDir)
		}
	}
	os.Exit(code)
}

// options returns the run's options, skipping b when the models are missing.
func options(tb testing.TB) Options {
	tb.Helper()
	wd, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	o, err := OptionsFromEnv(wd)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(o.ModelDir, "tiny_face_detector_model-weights_manifest.json")); err != nil {
		tb.Skipf("no models in %s: run examples/imageclass/fetch-model.sh (or set UPM_MODEL_DIR)", o.ModelDir)
	}
	if report == nil {
		report = &Report{Opts: o, HashMBps: map[string]float64{}}
	}
	return o
}

// measured holds each sub-benchmark's result, so that it measures once even
// if the testing package calls it again with a larger b.N.
var measured = map[string]*Result{}

// BenchmarkDensity starts N instances of the imageclass function under each
// configuration and reports their memory and the cost of deduplicating it.
// Each sub-benchmark measures once; its b.N loop does nothing (run it with
// -benchtime 1x).
func BenchmarkDensity(b *testing.B) {
	o := options(b)
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	warmPageCache(b, o.ModelDir)
	h, err := NewHarness(o, exe)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := h.Close(); err != nil {
			b.Errorf("restoring the system: %v", err)
		}
	}()
	configs := HostConfigs
	if o.InGuest {
		configs = GuestConfigs
	}
	for _, cfg := range configs {
		for _, n := range o.N {
			b.Run(fmt.Sprintf("%s/n=%d", cfg.Name, n), func(b *testing.B) {
				if reason := h.SkipReason(cfg); reason != "" {
					note := cfg.Name + ": " + reason
					if len(report.Skipped) == 0 || report.Skipped[len(report.Skipped)-1] != note {
						report.Skipped = append(report.Skipped, note)
					}
					b.Skip(reason)
				}
				r, ok := measured[b.Name()]
				if !ok {
					r, err = h.Measure(cfg, n)
					if err != nil {
						b.Fatal(err)
					}
					measured[b.Name()] = r
					report.Results = append(report.Results, r)
				}
				for range b.N {
					// One measurement whatever b.N: see above.
				}
				reportMetrics(b, report.Figures(r), o.InGuest)
			})
		}
	}
}

func reportMetrics(b *testing.B, f Figures, inGuest bool) {
	b.ReportMetric(f.PSSMiB, "MiB/total")
	b.ReportMetric(f.UsedMiB, "MiB/used")
	if inGuest {
		b.ReportMetric(f.CgroupMiB, "MiB/cgroups")
	}
	if !math.IsNaN(f.SavedPct) {
		b.ReportMetric(f.SavedPct, "%saved")
	}
	b.ReportMetric(f.MarginalMiB, "MiB/instance")
	b.ReportMetric(f.Density, "density")
	if !math.IsNaN(f.DedupS) {
		b.ReportMetric(f.DedupS, "s/dedup")
	}
	if f.Capped {
		b.ReportMetric(f.WaitS, "s/cap")
	}
	b.ReportMetric(f.KSMDCPUS, "s/ksmd-cpu")
	b.ReportMetric(f.AdviseSysS, "s/advise-cpu")
	b.ReportMetric(f.AdviseMs, "ms/advise")
	if f.MergeMBps > 0 {
		b.ReportMetric(f.MergeMBps, "advise-MB/s")
	}
}

// warmPageCache reads the model files, so that their page cache is charged
// to the harness and not to the first instance's cgroup.
func warmPageCache(tb testing.TB, dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			_, _ = os.ReadFile(filepath.Join(dir, e.Name()))
		}
	}
}

// BenchmarkHash hashes the model's decoded weights in user space, the
// practical limit of any merge that must read every byte: next to UPM's
// advise-MB/s in BenchmarkDensity.
func BenchmarkHash(b *testing.B) {
	o := options(b)
	m, err := classifier.Load(o.ModelDir, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	// The decoded weights are the arena's bytes: hash what UPM merges.
	arena := m.WeightBytes()
	if len(arena) == 0 {
		b.Skip("the weights are not in an arena here")
	}
	report.ModelSize = int64(len(arena))
	seed := maphash.MakeSeed()
	for _, bc := range []struct {
		name string
		hash func([]byte) uint64
	}{
		{"maphash", func(p []byte) uint64 { return maphash.Bytes(seed, p) }},
		{"maphash-pages", func(p []byte) uint64 {
			// One hash a 4 KiB page, as a page merger computes.
			var x uint64
			for off := 0; off < len(p); off += 4096 {
				x ^= maphash.Bytes(seed, p[off:min(off+4096, len(p))])
			}
			return x
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(arena)))
			var sink uint64
			start := time.Now()
			for range b.N {
				sink ^= bc.hash(arena)
			}
			elapsed := time.Since(start)
			_ = sink
			report.HashMBps[bc.name] = float64(b.N) * float64(len(arena)) / 1e6 / elapsed.Seconds()
		})
	}
}
