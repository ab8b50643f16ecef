// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Options tune a run; OptionsFromEnv reads them from the environment. Every
// UPM_BENCH_* variable set on the host reaches the guest (vmtest forwards
// them all).
type Options struct {
	// InGuest is set in the test guest (VMTEST_IN_GUEST=1): the bench may
	// change KSM's settings and make cgroups and namespaces.
	InGuest bool
	// ModelDir holds the imageclass models (UPM_MODEL_DIR).
	ModelDir string
	// ResultsDir receives results.md, the CSV files, bench.txt and the
	// plots (UPM_RESULTS_DIR).
	ResultsDir string
	// Function is the imageclass command each instance runs
	// (UPM_BENCH_FUNCTION; default: imageclass on $PATH).
	Function string
	// N are the instance counts (UPM_BENCH_N, "1,2,4,8,16").
	N []int
	// Rounds is how many times every configuration is measured at every
	// N (UPM_BENCH_COUNT).
	Rounds int
	// Configs, if set, limits the run to the named configurations
	// (UPM_BENCH_CONFIGS, comma-separated).
	Configs []string
	// KSMWait caps the wait for ksmd to merge (UPM_BENCH_KSM_WAIT).
	KSMWait time.Duration
	// Settle is how long every configuration is watched after the last
	// instance is ready, at least (UPM_BENCH_SETTLE).
	Settle time.Duration
	// Steady is how long ksmd's CPU is measured once merging has
	// converged: what it costs for as long as it runs (UPM_BENCH_STEADY).
	Steady time.Duration
	// Sample is the period of the memory samples (UPM_BENCH_SAMPLE); the
	// instances' merged pages are sampled five times as often.
	Sample time.Duration
	// ReadyTimeout bounds the wait for the instances to be ready
	// (UPM_BENCH_READY_TIMEOUT).
	ReadyTimeout time.Duration
	// Budget is the memory the extrapolated density fills with instances
	// (UPM_BENCH_BUDGET_MIB, in MiB).
	Budget int64
	// Classify is the request sent to every instance once measured:
	// "face", "full" or "none" (UPM_BENCH_CLASSIFY).
	Classify string
}

// OptionsFromEnv returns the options of the environment; pkgDir is the
// bench package's directory, from which the model directory defaults to
// ../build/model.
func OptionsFromEnv(pkgDir string) (Options, error) {
	o := Options{
		InGuest:      os.Getenv("VMTEST_IN_GUEST") != "",
		ModelDir:     os.Getenv("UPM_MODEL_DIR"),
		ResultsDir:   os.Getenv("UPM_RESULTS_DIR"),
		Function:     os.Getenv("UPM_BENCH_FUNCTION"),
		N:            []int{1, 2, 4, 8, 16},
		Rounds:       1,
		KSMWait:      120 * time.Second,
		Settle:       2 * time.Second,
		Steady:       5 * time.Second,
		Sample:       250 * time.Millisecond,
		ReadyTimeout: 10 * time.Minute,
		Budget:       1 << 30,
		Classify:     os.Getenv("UPM_BENCH_CLASSIFY"),
	}
	if !o.InGuest {
		// Keep runs on a shared host short.
		o.N = []int{1, 4}
		o.KSMWait = 5 * time.Second
		o.Steady = time.Second
	}
	if o.ModelDir == "" {
		o.ModelDir = filepath.Join(pkgDir, "..", "build", "model")
	}
	if o.ResultsDir == "" {
		o.ResultsDir = filepath.Join(pkgDir, "..", "build", "bench-results")
	}
	var errs []error
	if o.Function == "" {
		p, err := exec.LookPath("imageclass")
		if err != nil {
			p = ""
		}
		o.Function = p
	}
	if v := os.Getenv("UPM_BENCH_N"); v != "" {
		n, err := parseCounts(v)
		errs = append(errs, err)
		o.N = n
	}
	if v := os.Getenv("UPM_BENCH_COUNT"); v != "" {
		r, err := strconv.Atoi(v)
		if err != nil || r <= 0 {
			errs = append(errs, fmt.Errorf("UPM_BENCH_COUNT=%q: want a positive number of rounds", v))
		}
		o.Rounds = r
	}
	if v := os.Getenv("UPM_BENCH_CONFIGS"); v != "" {
		for _, c := range strings.Split(v, ",") {
			if c = strings.TrimSpace(c); c != "" {
				o.Configs = append(o.Configs, c)
			}
		}
	}
	switch o.Classify {
	case "", "face", "full", "none":
	default:
		errs = append(errs, fmt.Errorf("UPM_BENCH_CLASSIFY=%q: want face, full or none", o.Classify))
	}
	for _, d := range []struct {
		env string
		to  *time.Duration
	}{
		{"UPM_BENCH_KSM_WAIT", &o.KSMWait},
		{"UPM_BENCH_SETTLE", &o.Settle},
		{"UPM_BENCH_STEADY", &o.Steady},
		{"UPM_BENCH_SAMPLE", &o.Sample},
		{"UPM_BENCH_READY_TIMEOUT", &o.ReadyTimeout},
	} {
		if v := os.Getenv(d.env); v != "" {
			t, err := time.ParseDuration(v)
			if err == nil && t < 0 {
				err = errors.New("negative")
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", d.env, v, err))
			}
			*d.to = t
		}
	}
	if o.Sample <= 0 {
		errs = append(errs, errors.New("UPM_BENCH_SAMPLE must be positive"))
	}
	if v := os.Getenv("UPM_BENCH_BUDGET_MIB"); v != "" {
		mib, err := strconv.ParseInt(v, 10, 64)
		if err != nil || mib <= 0 {
			errs = append(errs, fmt.Errorf("UPM_BENCH_BUDGET_MIB=%q: want a positive number of MiB", v))
		}
		o.Budget = mib << 20
	}
	return o, errors.Join(errs...)
}

// parseCounts parses "1,2,4" into sorted, distinct positive counts.
func parseCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("UPM_BENCH_N=%q: %q is not a positive count", s, f)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
