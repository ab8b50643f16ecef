//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Package integration holds the tests that need a whole machine to
// themselves: they change system-wide KSM settings, start many processes
// and, on the UPM kernel, use MADV_UPM_MERGE. They run inside the test VM
// (make test) and skip anywhere else.
package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
)

// requireGuest skips the test unless it runs inside the test VM, where
// changing /sys/kernel/mm/ksm is ours to do.
func requireGuest(t *testing.T) {
	t.Helper()
	if os.Getenv("VMTEST_IN_GUEST") != "1" {
		t.Skip("changes system-wide KSM settings: runs only inside the test VM (make test)")
	}
}

// requireUPM skips the test unless the kernel has UPM.
func requireUPM(t *testing.T) {
	t.Helper()
	requireGuest(t)
	if upm.CurrentBackend() != upm.BackendUPM {
		t.Skip("needs the UPM kernel: run make test")
	}
}

// sized scales a page count down on the debug kernel, where KASAN makes
// every page visit about ten times slower: the code paths stay the same.
func sized(pages int64) int64 {
	if os.Getenv("UPM_KERNEL_FLAVOUR") == "debug" {
		return max(pages/8, 64)
	}
	return pages
}

func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func addrOf(b []byte) string { return fmt.Sprintf("%#x", uintptrOf(b)) }

const ksmDir = "/sys/kernel/mm/ksm"
const upmDir = "/sys/kernel/mm/upm"

func readCounter(t *testing.T, dir, name string) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	require.NoError(t, err)
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	require.NoError(t, err, "%s/%s", dir, name)
	return v
}

func writeKnob(t *testing.T, name, value string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(ksmDir, name), []byte(value), 0))
}

// setKSM sets KSM knobs for the test and puts the old values back after it.
// run is restored last, after unmerging everything the test left merged.
func setKSM(t *testing.T, knobs map[string]string) {
	t.Helper()
	old := map[string]string{}
	for _, k := range []string{"run", "pages_to_scan", "sleep_millisecs"} {
		b, err := os.ReadFile(filepath.Join(ksmDir, k))
		require.NoError(t, err)
		old[k] = strings.TrimSpace(string(b))
	}
	t.Cleanup(func() {
		for k, v := range old {
			if k != "run" {
				_ = os.WriteFile(filepath.Join(ksmDir, k), []byte(v), 0)
			}
		}
		_ = os.WriteFile(filepath.Join(ksmDir, "run"), []byte(old["run"]), 0)
	})
	for _, k := range []string{"pages_to_scan", "sleep_millisecs", "run"} {
		if v, ok := knobs[k]; ok {
			writeKnob(t, k, v)
		}
	}
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in %v: %s", what, timeout, state)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// ksmdState describes what ksmd is doing, for a test that waits for it in
// vain: its passes and pages scanned, its scheduler state and where it
// sleeps (wchan, and its kernel stack where the kernel keeps one).
func ksmdState(t *testing.T) string {
	t.Helper()
	state := fmt.Sprintf("full_scans=%d pages_scanned=%d", readCounter(t, ksmDir, "full_scans"),
		readCounter(t, ksmDir, "pages_scanned"))
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, comm := range comms {
		if b, err := os.ReadFile(comm); err != nil || strings.TrimSpace(string(b)) != "ksmd" {
			continue
		}
		dir := filepath.Dir(comm)
		stat, _ := os.ReadFile(filepath.Join(dir, "stat"))
		wchan, _ := os.ReadFile(filepath.Join(dir, "wchan"))
		stack, _ := os.ReadFile(filepath.Join(dir, "stack"))
		state += fmt.Sprintf("; ksmd %s: stat %s; wchan %s; stack:\n%s", filepath.Base(dir),
			strings.TrimSpace(string(stat)), wchan, stack)
	}
	return state
}

// ksmCounters is a snapshot of KSM's global counters.
type ksmCounters struct{ shared, sharing, unshared int64 }

func readKSM(t *testing.T) ksmCounters {
	return ksmCounters{
		shared:   readCounter(t, ksmDir, "pages_shared"),
		sharing:  readCounter(t, ksmDir, "pages_sharing"),
		unshared: readCounter(t, ksmDir, "pages_unshared"),
	}
}

func (c ksmCounters) String() string {
	return fmt.Sprintf("pages_shared=%d pages_sharing=%d pages_unshared=%d", c.shared, c.sharing, c.unshared)
}
