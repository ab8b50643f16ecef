// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Package bench measures function density: how much memory N instances of
// the imageclass function (examples/imageclass) take with no page merging,
// with stock KSM at two speeds, and with UPM, and how long and how much CPU
// the merging takes. It is run as benchmarks:
//
//	go test -run '^$' -bench . -benchtime 1x ./bench
//
// Each instance is a separate process, the bench's own test binary started
// again with UPM_BENCH_INSTANCE set: it loads the face models (27 MB of
// float32 weights in a sealed upm.Arena), classifies one face, reports
// itself ready on stdout and idles until its standard input closes. In the
// test guest (VMTEST_IN_GUEST=1) each instance gets its own cgroup v2 memory
// group and UTS, IPC and PID namespaces, as a container runtime would, and
// the bench sets KSM's knobs for each configuration; on any other host it
// compares only "none" with KSM as currently configured, touching no setting.
//
// Each sub-benchmark (config/n=N) measures once, whatever b.N is: its
// figures are reported with b.ReportMetric for benchstat, and written as
// results.md, results.csv and plots into $UPM_RESULTS_DIR. See RESULTS.md for
// what is measured and the environment variables that tune a run.
package bench
