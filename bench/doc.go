// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Package bench measures function density and UPM's advise call. It is run
// as benchmarks, in the test guest by make demo, make bench and make
// bench-advise:
//
//	go test -run '^$' -bench . -benchtime 1x ./bench
//
// BenchmarkDensity: how much memory N instances of the imageclass function
// (examples/imageclass, UPM_BENCH_FUNCTION) take with no page merging, with
// stock KSM at two speeds, and with UPM, and how long and how much CPU the
// merging takes. Each instance is a process of the imageclass command: it
// loads the face models (27 MB of float32 weights, in a sealed upm.Arena or
// on the Go heap), reports itself ready on stdout and serves until it is
// stopped. In the test guest (VMTEST_IN_GUEST=1) each instance gets its own
// cgroup v2 memory group and UTS, IPC and PID namespaces, as a container
// runtime would, and the bench sets KSM's knobs for each configuration; on
// any other host it compares only "none" with KSM as currently configured,
// touching no setting.
//
// BenchmarkAdvise: the cost of UPM's advise call by size and backing, and
// in bursts of advisers at the same moment against one after the other.
// Its advisers are processes of the bench's own test binary started again
// with UPM_BENCH_ADVISER set (see RunAdviser). It needs a UPM kernel and
// the guest.
//
// Each sub-benchmark measures once, whatever b.N is: its figures are
// reported with b.ReportMetric for benchstat, and written into
// $UPM_RESULTS_DIR (bench.txt, results.md, CSV files and plots for
// BenchmarkDensity; advise.txt for BenchmarkAdvise). See RESULTS.md for what
// is measured and the environment variables that tune a run.
package bench
