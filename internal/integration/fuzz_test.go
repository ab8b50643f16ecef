//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestUPMFuzz runs the C fuzzer of madvise arguments
// (tools/testing/selftests/mm/upm_fuzz.c) for 60 s (30 s on the debug
// kernel) with a fresh seed: every madvise must return the errno upm.rst
// documents for its input, no mapping's content may change, and the console
// watcher of the VM rig fails the run on any kernel report. The figures line is logged; rerun
// a failure with upm_fuzz -s SEED, or here with UPM_FUZZ_SEED (and
// UPM_FUZZ_SECONDS for a longer run) in the guest's environment.
func TestUPMFuzz(t *testing.T) {
	upmTest(t)
	const bin = "/bin/upm_fuzz"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s is not in this guest: kernel/build.sh builds it (make test)", bin)
	}
	// KASAN and lockdep make the debug kernel ten and more times slower;
	// its point is the reports, not the count.
	seconds, minCalls := 60, 100
	if os.Getenv("UPM_KERNEL_FLAVOUR") == "debug" {
		seconds, minCalls = 30, 20
	}
	if v := os.Getenv("UPM_FUZZ_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "UPM_FUZZ_SECONDS")
		seconds = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("UPM_FUZZ_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 0, 64)
		require.NoError(t, err, "UPM_FUZZ_SEED")
		seed = n
	}
	out, err := exec.Command(bin, "-t", strconv.Itoa(seconds), "-s", strconv.FormatUint(seed, 10)).CombinedOutput()
	figures := regexp.MustCompile(`(?m)^# fuzz: .*$`).FindString(string(out))
	t.Logf("%s", figures)
	if err != nil || !strings.Contains(string(out), "# Totals: pass:4 fail:0") {
		t.Fatalf("%s -t %d -s %d: %v:\n%s", bin, seconds, seed, err, out)
	}
	require.NotEmpty(t, figures, "no figures line:\n%s", out)

	// The run must have met every class: successes, EINVAL and ENOMEM.
	calls := regexp.MustCompile(`calls=(\d+)`).FindStringSubmatch(figures)
	require.Len(t, calls, 2)
	n, _ := strconv.Atoi(calls[1])
	assert.Greater(t, n, minCalls, "madvise calls in %ds", seconds)
	for _, e := range []string{" 0=", " EINVAL=", " ENOMEM="} {
		assert.Contains(t, figures, e, "no call ended with %s", strings.Trim(e, " ="))
	}
}

// TestLibraryFuzz runs each Fuzz target of the upm package's test binary
// (/bin/upm.test) in fuzzing mode for a bounded time, on the UPM backend
// that the host cannot offer. Coverage guidance needs a binary built with
// go test -c -fuzz=. (make guest-tests); a plain go test -c binary still
// fuzzes, with random mutations only, and the test says so. On the debug
// kernel, where one madvise of FuzzAdvise takes a second or more, the
// targets that reach the kernel get longer and the text parsers none.
func TestLibraryFuzz(t *testing.T) {
	upmTest(t)
	const bin = "/bin/upm.test"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s is not in this guest: make test-vm builds it", bin)
	}
	list, err := exec.Command(bin, "-test.list=^Fuzz").Output()
	require.NoError(t, err)
	targets := strings.Fields(string(list))
	require.NotEmpty(t, targets, "%s has no Fuzz targets", bin)
	debug := os.Getenv("UPM_KERNEL_FLAVOUR") == "debug"

	for _, target := range targets {
		t.Run(target, func(t *testing.T) {
			each := 20 * time.Second
			if debug {
				if strings.HasPrefix(target, "FuzzParse") {
					t.Skip("parses text, reaches no kernel path: the plain kernel's run fuzzes it")
				}
				each = time.Minute
			}
			dir := t.TempDir()
			// Minimizing each new interesting input could take the
			// default minute of the short time there is.
			cmd := exec.Command(bin, "-test.run=^$", "-test.fuzz=^"+target+"$",
				fmt.Sprintf("-test.fuzztime=%s", each), "-test.fuzzminimizetime=100x",
				"-test.fuzzcachedir="+dir+"/cache")
			cmd.Dir = dir // a failing input goes to testdata/fuzz here
			out, err := cmd.CombinedOutput()
			if err != nil && fuzzShutdownRace(string(out), dir, target) {
				t.Logf("%s: ignoring Go's fuzztime shutdown race (go.dev/issue/75804, fixed in Go 1.27): "+
					"the only error is the coordinator's own deadline and no failing input was written", target)
				err = nil
			}
			require.NoError(t, err, "%s -test.fuzz=%s:\n%s", bin, target, out)
			progress := regexp.MustCompile(`(?m)^fuzz: elapsed: .*execs: .*$`).FindAllString(string(out), -1)
			if len(progress) == 0 {
				// The time went on running the seeds under coverage
				// ("gathering baseline coverage: n/m completed").
				baseline := regexp.MustCompile(`baseline coverage: (\d+)/(\d+) completed`).FindAllStringSubmatch(string(out), -1)
				require.NotEmpty(t, baseline, "no fuzzing progress line:\n%s", out)
				last := baseline[len(baseline)-1]
				require.Equal(t, last[2], last[1], "%s did not suffice to run the seeds:\n%s", each, out)
				t.Logf("%s: the %s seeds passed; %s left no time to fuzz", target, last[2], each)
				return
			}
			t.Logf("%s: %s", target, progress[len(progress)-1])
			if !strings.Contains(string(out), "new interesting") {
				t.Logf("%s is not coverage-instrumented (build it with go test -c -fuzz=.): random inputs only", bin)
			}
		})
	}
}

// fuzzShutdownRace reports whether a fuzzing run that exited with an error
// failed only on Go 1.26's race between the -fuzztime deadline and a worker
// still busy with an input (go.dev/issue/75804): the coordinator then
// reports its own "context deadline exceeded" as the target's failure. Under
// TCG, where one FuzzAdvise input can take a second, the race is common. A
// real finding always writes its input to testdata/fuzz/TARGET and prints
// where; a crashed worker or a failed seed prints something else. Only a
// run with neither, whose one failure line is the deadline, is the race.
func fuzzShutdownRace(out, dir, target string) bool {
	if strings.Contains(out, "Failing input written to") {
		return false
	}
	if entries, err := os.ReadDir(dir + "/testdata/fuzz/" + target); err == nil && len(entries) > 0 {
		return false
	}
	failure := regexp.MustCompile(`(?m)^--- FAIL: ` + regexp.QuoteMeta(target) + ` \([0-9.]+s\)\n\s+context deadline exceeded\nFAIL\z`)
	return failure.MatchString(strings.TrimRight(out, "\n"))
}

func TestFuzzShutdownRace(t *testing.T) {
	dir := t.TempDir()
	progress := "fuzz: elapsed: 1m0s, execs: 4436 (0/sec), new interesting: 28 (total: 58)\n"
	race := progress + "--- FAIL: FuzzAdvise (60.26s)\n    context deadline exceeded\nFAIL\n"
	assert.True(t, fuzzShutdownRace(race, dir, "FuzzAdvise"), "the race as CI printed it")
	assert.False(t, fuzzShutdownRace(race, dir, "FuzzArena"), "another target's failure line")
	crash := progress + "--- FAIL: FuzzAdvise (3.10s)\n    --- FAIL: FuzzAdvise (0.00s)\n        fuzz_test.go:99: merged content changed\n" +
		"    Failing input written to testdata/fuzz/FuzzAdvise/0123abcd\nFAIL\n"
	assert.False(t, fuzzShutdownRace(crash, dir, "FuzzAdvise"), "a finding")
	worker := progress + "--- FAIL: FuzzAdvise (12.00s)\n    fuzzing process hung or terminated unexpectedly: exit status 2\nFAIL\n"
	assert.False(t, fuzzShutdownRace(worker, dir, "FuzzAdvise"), "a crashed worker")
	trailing := race + "panic: something after the deadline\n"
	assert.False(t, fuzzShutdownRace(trailing, dir, "FuzzAdvise"), "more output after the deadline line")
	require.NoError(t, os.MkdirAll(dir+"/testdata/fuzz/FuzzAdvise", 0o755))
	require.NoError(t, os.WriteFile(dir+"/testdata/fuzz/FuzzAdvise/0123abcd", []byte("go test fuzz v1\n"), 0o644))
	assert.False(t, fuzzShutdownRace(race, dir, "FuzzAdvise"), "an input written without the message")
}
