//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Package vmtest boots the guest kernel built by kernel/build.sh under QEMU
// and runs the repository's Go tests inside it, as root, where they may
// change system-wide KSM settings and use the UPM kernel.
//
// It is a separate module so that the upm library does not pull QEMU and
// u-root tooling into its users' builds.
package vmtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hugelgupf/vmtest/govmtest"
	"github.com/hugelgupf/vmtest/qemu"
	"github.com/u-root/mkuimage/uimage"
)

// guestPackages are the packages whose tests run inside the guest;
// UPM_GUEST_PACKAGES (comma-separated) chooses others.
//
// The upm package's own tests run there too, but not as a package of
// govmtest's: it copies the whole package directory into the guest, and the
// upm package's directory is the repository, build tree included. Its test
// binary (UPM_LIBRARY_TESTS) goes into the guest's /bin instead, and
// internal/integration runs it.
var guestPackages = []string{
	"github.com/upm-project/upm/internal/integration",
}

// defaultQEMU is TCG on purpose: /dev/kvm exists on our machines but nested
// guests die with "KVM internal error. Suberror: 1".
// -no-reboot: a panic ends QEMU rather than rebooting into the tests again.
// Two NUMA nodes of 1.5 GiB and one vCPU each, so that KSM's per-node trees,
// merge_across_nodes = 0 and move_pages between nodes are tested for real;
// a socket each, or the scheduler warns at boot that CPUs sharing a cache
// sit on two nodes.
const defaultQEMU = "qemu-system-x86_64 -accel tcg -cpu max -m 3072 -smp 2,sockets=2,cores=1,threads=1 -no-reboot" +
	" -object memory-backend-ram,id=node0,size=1536M -numa node,nodeid=0,cpus=0,memdev=node0" +
	" -object memory-backend-ram,id=node1,size=1536M -numa node,nodeid=1,cpus=1,memdev=node1"

// TestGuest runs the tests of guestPackages inside the guest: make test-vm.
// The kselftest-style C programs built by kernel/build.sh (UPM_SELFTESTS),
// the upm package's test binary (UPM_LIBRARY_TESTS) and the upm command
// (UPM_COMMAND) go into the guest's /bin; internal/integration runs them.
func TestGuest(t *testing.T) {
	packages := guestPackages
	if v := os.Getenv("UPM_GUEST_PACKAGES"); v != "" {
		packages = strings.Split(v, ",")
	}
	var files []string
	if dir := os.Getenv("UPM_SELFTESTS"); dir != "" {
		progs, err := filepath.Glob(filepath.Join(dir, "upm_*"))
		if err != nil || len(progs) == 0 {
			t.Fatalf("UPM_SELFTESTS=%s holds no upm_* programs: kernel/build.sh builds them", dir)
		}
		for _, prog := range progs {
			files = append(files, prog+":bin/"+filepath.Base(prog))
		}
	}
	if host := os.Getenv("UPM_LIBRARY_TESTS"); host != "" {
		if _, err := os.Stat(host); err != nil {
			t.Fatalf("UPM_LIBRARY_TESTS: %v (make guest-tests builds it)", err)
		}
		files = append(files, host+":bin/upm.test")
	}
	if host := os.Getenv("UPM_COMMAND"); host != "" {
		if _, err := os.Stat(host); err != nil {
			t.Fatalf("UPM_COMMAND: %v (make guest-tests builds it)", err)
		}
		files = append(files, host+":bin/upm")
	}
	runGuest(t, packages, nil, files...)
}

// TestBench runs the density benchmarks of bench/ inside the guest: make
// demo and make bench. The model goes into the guest's /model and the
// imageclass command (UPM_BENCH_FUNCTION on the host, built by the
// Makefile) into its /bin; every UPM_BENCH_* variable of the host's
// environment reaches the guest's.
func TestBench(t *testing.T) {
	if os.Getenv("UPM_BENCH") == "" {
		t.Skip("runs the density benchmarks for make demo and make bench (UPM_BENCH=1)")
	}
	model := os.Getenv("UPM_MODEL_DIR")
	if model == "" {
		t.Fatal("UPM_MODEL_DIR: the model directory made by examples/imageclass/fetch-model.sh")
	}
	model, err := filepath.Abs(model)
	if err != nil {
		t.Fatal(err)
	}
	function := os.Getenv("UPM_BENCH_FUNCTION")
	if function == "" {
		t.Fatal("UPM_BENCH_FUNCTION: the imageclass command built for the guest (make demo builds it)")
	}
	if _, err := os.Stat(function); err != nil {
		t.Fatalf("UPM_BENCH_FUNCTION: %v", err)
	}
	env := []string{"UPM_MODEL_DIR=/model"}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "UPM_BENCH_") && !strings.HasPrefix(kv, "UPM_BENCH_FUNCTION=") {
			env = append(env, kv)
		}
	}
	env = append(env, "UPM_BENCH_FUNCTION=/bin/imageclass")
	runGuest(t, []string{"github.com/upm-project/upm/bench"}, env, model+":model", function+":bin/imageclass")
}

// runGuest boots VMTEST_KERNEL under QEMU, runs the Go tests (and
// benchmarks) of packages inside it with env added to the guest's
// environment and files added to its initramfs, shares UPM_RESULTS_DIR with
// it, and fails on any kernel report on the console.
func runGuest(t *testing.T, packages, env []string, files ...string) {
	kernel := os.Getenv("VMTEST_KERNEL")
	if kernel == "" {
		t.Skip("needs a guest kernel: run make test, or set VMTEST_KERNEL to a bzImage from kernel/build.sh")
	}
	if _, err := os.Stat(kernel); err != nil {
		t.Fatalf("VMTEST_KERNEL: %v", err)
	}
	if os.Getenv("VMTEST_QEMU") == "" {
		t.Setenv("VMTEST_QEMU", defaultQEMU)
	}

	resultsDir := os.Getenv("UPM_RESULTS_DIR")
	if resultsDir == "" {
		resultsDir = t.TempDir()
	}
	resultsDir, err := filepath.Abs(resultsDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(resultsDir, 0o755); err != nil {
		t.Fatal(err)
	}

	// gouinit runs each test binary with its default -test.timeout of 10
	// minutes; our TestMains take the real one from the environment.
	testTimeout := durationFromEnv(t, "UPM_GUEST_TEST_TIMEOUT", 30*time.Minute)
	env = append(env, "UPM_GO_TEST_TIMEOUT="+testTimeout.String())

	console := newConsoleWatcher()
	govmtest.Run(t, "vm",
		govmtest.WithPackageToTest(packages...),
		govmtest.WithUimage(uimage.WithFiles(files...)),
		govmtest.WithGoTestTimeout(testTimeout),
		govmtest.WithQEMUFn(
			qemu.WithVMTimeout(durationFromEnv(t, "UPM_VM_TIMEOUT", 45*time.Minute)),
			qemu.WithSerialOutput(console),
			qemu.WithAppendKernel(append(kernelArgs(), env...)...),
			qemu.P9Directory(resultsDir, "upmresults"),
		),
	)
	if reports := console.Reports(); len(reports) > 0 {
		t.Errorf("the guest kernel reported problems:\n%s", strings.Join(reports, "\n\n"))
	}
}

// kernelArgs are the guest's command line: what is not a kernel parameter
// reaches the guest's processes as environment variables.
func kernelArgs() []string {
	args := []string{
		"console=ttyS0",
		// A kernel oops ends the guest at once instead of leaving the
		// run to hang until the timeout.
		"oops=panic", "panic=-1",
		// Under TCG on a loaded host the guest can go seconds without
		// running, and RCU's default 21 s grace-period checks then warn
		// during boot (rcu_check_gp_start_stall), which the console
		// watcher rightly fails on. Its maximum, 300 s, keeps real stalls
		// reported; tasks in an uninterruptible (not killable) sleep are
		// reported by the hung-task detector after 120 s regardless.
		"rcupdate.rcu_cpu_stall_timeout=300",
		// PCI interrupt routing from the BIOS's table, not from ACPI:
		// under TCG, the debug kernels interpret ACPI's _PRT method so
		// slowly that it hits ACPICA's 30 s loop timeout, and the virtio
		// 9p devices are then left without an interrupt ("PCI INT A: no
		// GSI"): the guest waits forever for its first 9p reply. It also
		// takes a minute off every debug boot.
		"pci=noacpi",
		// The top of each node's memory in ZONE_MOVABLE: its memory
		// blocks can go offline (their pages migrate elsewhere), which
		// TestUPMMemoryOffline does under UPM's feet.
		"movablecore=1G",
		"UPM_RESULTS_DIR=/mount/9p/upmresults",
	}
	if flavour := os.Getenv("UPM_KERNEL_FLAVOUR"); flavour != "" {
		args = append(args, "UPM_KERNEL_FLAVOUR="+flavour)
	}
	for _, name := range []string{"UPM_TEST_RUN", "UPM_TEST_COUNT", "UPM_LIBRARY_RUN", "UPM_FUZZ_SEED", "UPM_FUZZ_SECONDS"} {
		if v := os.Getenv(name); v != "" {
			args = append(args, name+"="+v)
		}
	}
	return args
}

func durationFromEnv(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}
