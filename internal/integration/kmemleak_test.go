//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const kmemleakFile = "/sys/kernel/debug/kmemleak"

// kmemleak drives the debug kernel's leak detector around the guest tests:
// start forgets what boot left (drivers' early allocations are often
// reported falsely), and report scans after the last test. Both do nothing
// on a kernel without CONFIG_DEBUG_KMEMLEAK.
type kmemleak struct{ enabled bool }

func startKmemleak() (*kmemleak, error) {
	if os.Getenv("VMTEST_IN_GUEST") != "1" {
		return &kmemleak{}, nil
	}
	if _, err := os.Stat("/sys/kernel/debug"); err == nil {
		if err := unix.Mount("debugfs", "/sys/kernel/debug", "debugfs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("mount debugfs: %w", err)
		}
	}
	if _, err := os.Stat(kmemleakFile); err != nil {
		return &kmemleak{}, nil
	}
	// "clear" forgets only what a scan has reported, so scan first.
	for _, cmd := range []string{"scan", "clear"} {
		if err := os.WriteFile(kmemleakFile, []byte(cmd), 0); err != nil {
			return nil, fmt.Errorf("kmemleak %s: %w", cmd, err)
		}
	}
	return &kmemleak{enabled: true}, nil
}

// report scans for leaks and returns kmemleak's list, empty if none. An
// unreferenced object is only reported once it is older than five seconds
// and its contents did not change since the previous scan, hence the pause
// and the second scan.
func (k *kmemleak) report() (string, error) {
	if !k.enabled {
		return "", nil
	}
	for i := 0; i < 2; i++ {
		time.Sleep(6 * time.Second)
		if err := os.WriteFile(kmemleakFile, []byte("scan"), 0); err != nil {
			return "", fmt.Errorf("kmemleak scan: %w", err)
		}
	}
	b, err := os.ReadFile(kmemleakFile)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
