// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// ProgressPrefix starts every progress line, so that the VM rig can pass
// them from the guest's console to the person watching (see vmtest).
const ProgressPrefix = "upm-bench: "

// progress prints what the run is doing, for a person watching a run that
// takes many minutes: the phase, the configuration, how many instances are
// started and ready, how much is merged, and the time since the run began.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func newProgress(w io.Writer) *progress { return &progress{w: w, start: time.Now()} }

func (p *progress) say(label, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	el := time.Since(p.start).Round(time.Second)
	fmt.Fprintf(p.w, "%s[%02d:%02d] %s: %s\n", ProgressPrefix, int(el.Minutes()), int(el.Seconds())%60, label, fmt.Sprintf(format, args...))
}
