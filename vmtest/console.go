// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package vmtest

import (
	"bytes"
	"regexp"
	"strings"
	"sync"
)

// kernelReport matches the first line of the reports the kernel prints when
// something is wrong: oopses and panics, BUG and WARNING splats (lockdep,
// KASAN, DEBUG_VM, sleeping in atomic context, list corruption) and hung
// tasks. Only kernel lines count (they start with a printk timestamp): test
// output on the same console may print such words.
var kernelReport = regexp.MustCompile(`^\[\s*\d+\.\d+\] .*(BUG:|WARNING:|Oops|Kernel panic|kernel BUG at|general protection fault|INFO: task .* blocked for more than|INFO: possible (circular|recursive)|UBSAN:|list_(add|del) corruption|Unable to handle kernel)`)

// reportContext is how many console lines after a report's first line are
// kept with it: enough for the stack trace.
const reportContext = 40

// consoleWatcher receives the guest's serial console and keeps every kernel
// report with the lines that follow it.
type consoleWatcher struct {
	mu      sync.Mutex
	partial []byte
	reports []string
	current []string
	left    int
}

func newConsoleWatcher() *consoleWatcher { return &consoleWatcher{} }

func (c *consoleWatcher) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			break
		}
		c.line(strings.TrimRight(string(c.partial[:i]), "\r"))
		c.partial = c.partial[i+1:]
	}
	return len(p), nil
}

func (c *consoleWatcher) line(l string) {
	if c.left > 0 {
		c.current = append(c.current, l)
		c.left--
		if c.left == 0 {
			c.flush()
		}
		return
	}
	if kernelReport.MatchString(l) {
		c.current = []string{l}
		c.left = reportContext
	}
}

func (c *consoleWatcher) flush() {
	if len(c.current) > 0 {
		c.reports = append(c.reports, strings.Join(c.current, "\n"))
	}
	c.current = nil
	c.left = 0
}

// Close ends the stream; a report cut short by the guest's end is kept.
func (c *consoleWatcher) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) > 0 {
		c.line(string(c.partial))
		c.partial = nil
	}
	c.flush()
	return nil
}

// Reports returns the kernel reports seen so far.
func (c *consoleWatcher) Reports() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]string(nil), c.reports...)
	if len(c.current) > 0 {
		out = append(out, strings.Join(c.current, "\n"))
	}
	return out
}
