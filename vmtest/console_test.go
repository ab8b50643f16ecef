// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package vmtest

import (
	"strings"
	"testing"
)

// A console as the guest prints it: kernel lines with printk timestamps,
// test output without.
const sampleConsole = `[    0.000000] Linux version 6.12.117
=== RUN   TestSomething
    some_test.go:12: BUG: this is test output, not a kernel report
[   12.345678] ======================================================
[   12.345679] WARNING: possible circular locking dependency detected
[   12.345680] 6.12.117 #1 Not tainted
[   12.345681] ------------------------------------------------------
--- PASS: TestSomething (0.01s)
[   20.000001] ==================================================================
[   20.000002] BUG: KASAN: slab-use-after-free in upm_merge_page+0x1a/0x2b
[   20.000003] Read of size 8 at addr ffff888003a1b2c0 by task upm.test/123
`

func TestConsoleWatcherFindsKernelReports(t *testing.T) {
	c := newConsoleWatcher()
	// Written in odd pieces, as a serial line delivers it.
	for _, chunk := range strings.SplitAfter(sampleConsole, "e") {
		if _, err := c.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	reports := c.Reports()
	if len(reports) != 1 {
		// The KASAN report starts within the lockdep report's context
		// lines, so both are kept together, with their stack traces.
		t.Fatalf("got %d reports, want 1:\n%s", len(reports), strings.Join(reports, "\n---\n"))
	}
	for _, want := range []string{"possible circular locking dependency", "BUG: KASAN: slab-use-after-free", "Read of size 8"} {
		if !strings.Contains(reports[0], want) {
			t.Errorf("report lacks %q:\n%s", want, reports[0])
		}
	}
	if strings.Contains(reports[0], "this is test output") {
		t.Errorf("test output taken for a kernel report:\n%s", reports[0])
	}
}

func TestConsoleWatcherQuietConsole(t *testing.T) {
	c := newConsoleWatcher()
	c.Write([]byte("[    1.000000] Run /init as init process\nBUG: printed by a test\n--- FAIL: TestX\n"))
	c.Close()
	if r := c.Reports(); len(r) != 0 {
		t.Fatalf("reports on a quiet console: %q", r)
	}
}
