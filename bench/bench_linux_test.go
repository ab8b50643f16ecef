// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/upm-project/upm/examples/imageclass/classifier"
)

// report collects the results of this run; TestMain writes it.
var report *Report

func TestMain(m *testing.M) {
	if spec := os.Getenv(AdviserEnv); spec != "" {
		os.Exit(RunAdviser(spec))
	}
	// The harness itself advises nothing; each instance gets its own
	// UPM_BACKEND.
	os.Setenv("UPM_BACKEND", "none")
	// In the guest the rig cannot pass -test.timeout or -test.benchtime;
	// they come through the environment.
	flag.Parse()
	if v := os.Getenv("UPM_GO_TEST_TIMEOUT"); v != "" {
		_ = flag.Set("test.timeout", v)
	}
	// The guest runs every benchmark (-test.bench=.); UPM_BENCH_RUN
	// chooses, as make demo, make bench and make bench-advise do.
	if v := os.Getenv("UPM_BENCH_RUN"); v != "" {
		_ = flag.Set("test.bench", v)
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

// options returns the run's options, skipping tb when the models or the
// imageclass command are missing.
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

// measured holds each round's results, so that a sub-benchmark measures once
// even if the testing package calls it again (a larger b.N, or -count).
var measured = map[string]*Result{}

// BenchmarkDensity starts N instances of the imageclass function under each
// configuration and reports their memory and the cost of deduplicating it.
// Each sub-benchmark measures once; its b.N loop does nothing (run it with
// -benchtime 1x). Repetitions are rounds (UPM_BENCH_COUNT), not -count,
// which would repeat each sub-benchmark back to back: in every round, every
// N runs each configuration, in an order that rotates from round to round,
// so that no configuration always runs first or on a machine its
// predecessor warmed.
func BenchmarkDensity(b *testing.B) {
	o := options(b)
	if o.Function == "" {
		b.Skip("no imageclass command: go build ./examples/imageclass and set UPM_BENCH_FUNCTION (make demo does)")
	}
	warmPageCache(b, o.ModelDir)
	h, err := NewHarness(o)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := h.Close(); err != nil {
			b.Errorf("restoring the system: %v", err)
		}
	}()
	configs := h.Configs()
	report.Configs = configs
	for round := 1; round <= o.Rounds; round++ {
		for _, n := range o.N {
			for i := range configs {
				cfg := configs[(i+round-1)%len(configs)]
				b.Run(fmt.Sprintf("config=%s/n=%d", cfg.Name, n), func(b *testing.B) {
					if reason := h.SkipReason(cfg); reason != "" {
						note := cfg.Name + ": " + reason
						if !slices.Contains(report.Skipped, note) {
							report.Skipped = append(report.Skipped, note)
						}
						b.Skip(reason)
					}
					key := fmt.Sprintf("%s/n=%d#%d", cfg.Name, n, round)
					r, ok := measured[key]
					if !ok {
						r, err = h.Measure(cfg, n, round)
						if err != nil {
							b.Fatal(err)
						}
						measured[key] = r
						report.Results = append(report.Results, r)
					}
					for range b.N {
						// One measurement whatever b.N: see above.
					}
					for _, m := range report.Figures(r).metrics() {
						b.ReportMetric(m.v, m.unit)
					}
				})
			}
		}
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

// BenchmarkHash hashes the model's decoded weights in user space with
// xxhash64, one hash a 4 KiB page as a page merger computes them: the
// practical limit of any merge that must read every byte once, next to
// UPM's advise throughput in BenchmarkDensity.
func BenchmarkHash(b *testing.B) {
	o := options(b)
	m, err := classifier.Load(o.ModelDir, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	// The decoded weights are the arena's bytes: hash what UPM merges.
	weights := m.WeightBytes()
	if len(weights) == 0 {
		b.Skip("the weights are not in an arena here")
	}
	report.ModelSize = int64(len(weights))
	const page = 4096
	hashAll := func() (sink uint64) {
		for off := 0; off < len(weights); off += page {
			sink ^= xxhash.Sum64(weights[off:min(off+page, len(weights))])
		}
		return sink
	}
	b.SetBytes(int64(len(weights)))
	var sink uint64
	for range b.N {
		sink ^= hashAll()
	}
	// The run uses -benchtime 1x, one pass of a few milliseconds: the
	// figure reported comes from passes repeated for a second.
	passes, start := 0, time.Now()
	for time.Since(start) < time.Second {
		sink ^= hashAll()
		passes++
	}
	elapsed := time.Since(start)
	_ = sink
	mbps := float64(passes) * float64(len(weights)) / 1e6 / elapsed.Seconds()
	b.ReportMetric(mbps, "MB/s-xxhash64-4KiB-pages")
	report.HashMBps["xxhash64 per 4 KiB page"] = mbps
}
