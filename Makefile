# The README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
BUILD ?= $(CURDIR)/build
GO ?= go
KERNEL_PLAIN := $(BUILD)/kernel-plain/arch/x86/boot/bzImage
KERNEL_DEBUG := $(BUILD)/kernel-debug/arch/x86/boot/bzImage
KERNEL_PROFILE := $(BUILD)/kernel-profile/arch/x86/boot/bzImage
# Built by kernel/build.sh; the VM rig puts every program in it into the
# guest's /bin.
export UPM_SELFTESTS := $(BUILD)/selftests
# The upm package's tests, built for the guest (see vmtest/vm_test.go).
export UPM_LIBRARY_TESTS := $(BUILD)/guest/upm.test
# The operator's command, built for the guest, where its tests run it.
export UPM_COMMAND := $(BUILD)/guest/upm
MODEL := $(BUILD)/model
# QEMU's command line (TCG: KVM guests die on our machines) is vmtest's
# defaultQEMU; set VMTEST_QEMU to override it.

.PHONY: all test test-host test-vm test-vm-debug check kernel kernel-debug kernel-profile vm demo bench bench-advise bench-profile model guest-tests guest-function deps-vm clean

# The Go modules of the repository: the library, the examples, the density
# benchmark and the VM rig.
MODULES := . examples bench vmtest

all: test

## test: every test: host tests, kernel builds, the tests inside the VM on the
## plain and the debug (lockdep, DEBUG_VM, KASAN) kernel.
test: test-host test-vm test-vm-debug

## test-host: vet, formatting and the Go tests that run on any Linux host.
test-host: check model
	$(GO) test -count=1 ./...
	cd examples && $(GO) test -count=1 ./...
	cd bench && $(GO) test -count=1 ./...
	cd vmtest && $(GO) test -count=1 -run 'TestConsole' ./...

## check: gofmt, and go vet of every module for Linux, macOS and Windows (the
## package builds everywhere; outside Linux it says it cannot merge).
check:
	@echo "== gofmt, go vet (linux, darwin, windows)"
	@test -z "$$(gofmt -l . | tee /dev/stderr)" || { echo "gofmt: files above need formatting"; exit 1; }
	@set -e; for m in $(MODULES); do for os in linux darwin windows; do \
		echo "go vet $$m/... GOOS=$$os"; (cd $$m && GOOS=$$os $(GO) vet ./...); done; done

## deps-vm: QEMU, installed from apt when missing (as root).
deps-vm:
	@scripts/install-deps.sh vm

kernel:
	kernel/build.sh plain

kernel-debug:
	kernel/build.sh debug

kernel-profile:
	kernel/build.sh profile

## test-vm: boot the plain UPM kernel and run the Go tests inside it.
guest-tests:
	# -fuzz=. instruments the binary for coverage, so that the Fuzz targets
	# run guided inside the guest (TestLibraryFuzz); ordinary tests run as usual.
	CGO_ENABLED=0 $(GO) test -c -fuzz=. -o $(UPM_LIBRARY_TESTS) .
	CGO_ENABLED=0 $(GO) build -o $(UPM_COMMAND) ./cmd/upm

test-vm: kernel guest-tests deps-vm
	@mkdir -p $(BUILD)/results/plain
	cd vmtest && VMTEST_KERNEL=$(KERNEL_PLAIN) UPM_RESULTS_DIR=$(BUILD)/results/plain \
		$(GO) test -v -count=1 -timeout 60m -run 'TestGuest$$' ./...

## test-vm-debug: the same tests on the debug kernel; any lockdep, KASAN or
## DEBUG_VM report fails the run.
test-vm-debug: kernel-debug guest-tests deps-vm
	@mkdir -p $(BUILD)/results/debug
	cd vmtest && VMTEST_KERNEL=$(KERNEL_DEBUG) UPM_RESULTS_DIR=$(BUILD)/results/debug \
		UPM_KERNEL_FLAVOUR=debug $(GO) test -v -count=1 -timeout 60m -run 'TestGuest$$' ./...

## vm: boot the plain kernel and run chosen guest tests, e.g.
##   make vm RUN=TestUPMMergesAtOnce [COUNT=10]
vm: kernel guest-tests deps-vm
	cd vmtest && VMTEST_KERNEL=$(KERNEL_PLAIN) UPM_TEST_RUN='$(RUN)' UPM_TEST_COUNT='$(COUNT)' \
		$(GO) test -v -count=1 -timeout 60m -run 'TestGuest$$' ./...

model:
	@scripts/install-deps.sh model
	UPM_MODEL_DIR=$(MODEL) examples/imageclass/fetch-model.sh

## guest-function: the imageclass command, static, for the guest: every
## instance the density benchmark starts runs it.
FUNCTION := $(BUILD)/guest/imageclass
guest-function:
	cd examples && CGO_ENABLED=0 $(GO) build -o $(FUNCTION) ./imageclass

# The density benchmark in the guest; $(1) is the results directory, $(2)
# the instance counts and $(3) the rounds, unless UPM_BENCH_N and
# UPM_BENCH_COUNT say otherwise. Every UPM_BENCH_* variable reaches the
# guest (see bench/RESULTS.md). benchstat then summarises the rounds.
# UPM_BENCH_RUN picks BenchmarkDensity and BenchmarkHash: it reaches the
# guest on the kernel's command line, where a "|" is better left out.
define run-bench
	@mkdir -p $(1)
	cd vmtest && VMTEST_KERNEL=$(KERNEL_PLAIN) UPM_RESULTS_DIR=$(1) \
		UPM_BENCH=1 UPM_BENCH_RUN='^Benchmark[DH]' \
		UPM_MODEL_DIR=$(MODEL) UPM_BENCH_FUNCTION=$(FUNCTION) \
		UPM_BENCH_N=$${UPM_BENCH_N:-$(2)} UPM_BENCH_COUNT=$${UPM_BENCH_COUNT:-$(3)} \
		$(GO) test -v -count=1 -timeout 240m -run 'TestBench$$' ./...
	cd bench && $(GO) tool benchstat -row /n -col /config $(1)/bench.txt >$(1)/benchstat.txt
	@cat $(1)/results.md
	@echo "benchstat of the rounds: $(1)/benchstat.txt"
endef

## demo: the main job: build the kernel if needed, boot the guest, start 16
## instances of the image-recognition function under each configuration (no
## dedup, stock KSM at defaults and tuned, UPM; weights in an arena and on
## the Go heap), print the tables and write the plots to build/results/demo.
demo: kernel model guest-function deps-vm
	$(call run-bench,$(BUILD)/results/demo,16,1)

## bench: the sweep (1, 2, 4, 8, 16 instances, three rounds) into
## build/results/bench.
bench: kernel model guest-function deps-vm
	$(call run-bench,$(BUILD)/results/bench,1$(comma)2$(comma)4$(comma)8$(comma)16,3)

comma := ,

## bench-advise: UPM's advise call on its own (BenchmarkAdvise: cost per page
## from 32 MiB to 1 GiB in 4 KiB and huge pages; bursts of 1 to 16 advisers at
## the same moment against one after the other) into build/results/advise.
## The guest gets 5 GiB (two processes of 1 GiB at once) and
## UPM_BENCH_SMP vCPUs (2).
ADVISE_RESULTS := $(BUILD)/results/advise
bench-advise: kernel model guest-function deps-vm
	@mkdir -p $(ADVISE_RESULTS)
	rm -f $(ADVISE_RESULTS)/advise.txt
	cd vmtest && VMTEST_KERNEL=$(KERNEL_PLAIN) UPM_RESULTS_DIR=$(ADVISE_RESULTS) \
		VMTEST_QEMU="qemu-system-x86_64 -accel tcg -cpu max -m 5120 -smp $${UPM_BENCH_SMP:-2} -no-reboot" \
		UPM_BENCH=1 UPM_BENCH_RUN=BenchmarkAdvise UPM_MODEL_DIR=$(MODEL) UPM_BENCH_FUNCTION=$(FUNCTION) \
		$(GO) test -v -count=1 -timeout 120m -run 'TestBench$$' ./...
	cd bench && $(GO) tool benchstat $(ADVISE_RESULTS)/advise.txt >$(ADVISE_RESULTS)/benchstat.txt
	@cat $(ADVISE_RESULTS)/benchstat.txt

## bench-profile: BenchmarkAdvise on the profile kernel (the function
## profiler on), each advise profiled: where its time goes, function by
## function, in build/results/profile/profile.txt. Profiling slows the calls
## down: take the timings from bench-advise, the shares from here. Takes
## UPM_BENCH_ADVISE_MIB and UPM_BENCH_BURST_N as bench-advise does.
PROFILE_RESULTS := $(BUILD)/results/profile
bench-profile: kernel-profile model guest-function deps-vm
	@mkdir -p $(PROFILE_RESULTS)
	rm -f $(PROFILE_RESULTS)/advise.txt $(PROFILE_RESULTS)/profile.txt
	cd vmtest && VMTEST_KERNEL=$(KERNEL_PROFILE) UPM_RESULTS_DIR=$(PROFILE_RESULTS) \
		VMTEST_QEMU="qemu-system-x86_64 -accel tcg -cpu max -m 5120 -smp $${UPM_BENCH_SMP:-2} -no-reboot" \
		UPM_BENCH=1 UPM_BENCH_PROFILE=1 UPM_BENCH_RUN=BenchmarkAdvise UPM_MODEL_DIR=$(MODEL) UPM_BENCH_FUNCTION=$(FUNCTION) \
		$(GO) test -v -count=1 -timeout 120m -run 'TestBench$$' ./...
	@cat $(PROFILE_RESULTS)/profile.txt

clean:
	rm -rf $(BUILD)
