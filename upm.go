// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
)

// Backend is the kernel mechanism that merges advised pages.
type Backend int

const (
	// BackendNone means nothing merges pages on this system: the OS is not
	// Linux, the kernel was built without KSM, or UPM_BACKEND=none.
	BackendNone Backend = iota
	// BackendKSM is stock Kernel Samepage Merging. Advised pages are marked
	// mergeable (MADV_MERGEABLE) and the ksmd kernel thread merges them
	// later, at the pace set in /sys/kernel/mm/ksm, and only while it runs.
	BackendKSM
	// BackendUPM is a kernel with user-guided page merging. MADV_UPM_MERGE
	// merges the advised pages with identical pages advised earlier before
	// madvise returns.
	BackendUPM
)

// String returns "none", "ksm" or "upm".
func (b Backend) String() string {
	switch b {
	case BackendNone:
		return "none"
	case BackendKSM:
		return "ksm"
	case BackendUPM:
		return "upm"
	default:
		return fmt.Sprintf("Backend(%d)", int(b))
	}
}

// EnvBackend is the environment variable that overrides backend detection.
//
// Its values are "upm", "ksm" and "none"; empty or "auto" detects. A forced
// backend is used as it is: forcing "upm" on a kernel without UPM makes every
// Advise fail with an error wrapping ErrUnsupported rather than fall back to
// KSM, and forcing "ksm" on a UPM kernel uses MADV_MERGEABLE, which helps to
// compare the two. Any other value selects BackendNone, with BackendReason
// saying why. The variable is read once, at the first call that needs the
// backend.
const EnvBackend = "UPM_BACKEND"

// ErrUnsupported is returned, wrapped, when this system cannot merge pages:
// the OS is not Linux, the kernel lacks KSM or UPM, or a forced backend is not
// available. errors.Is(err, errors.ErrUnsupported) is true for it as well.
var ErrUnsupported error = unsupportedError{}

type unsupportedError struct{}

func (unsupportedError) Error() string { return "not supported" }
func (unsupportedError) Unwrap() error { return errors.ErrUnsupported }

var (
	// ErrTooSmall is returned, wrapped, for a range that holds no whole page.
	// Only the page-aligned interior of a range is advised, so a range
	// smaller than a page, or one that straddles a page boundary without
	// covering a whole page, has nothing to advise.
	ErrTooSmall = errors.New("range holds no whole page")
	// ErrClosed is returned, wrapped, by operations on a Region that was
	// unadvised, or on a Mapping or Arena that was closed.
	ErrClosed = errors.New("already closed")
	// ErrSealed is returned, wrapped, by Alloc and Seal on a sealed Arena.
	ErrSealed = errors.New("arena is sealed")
	// ErrArenaFull is returned, wrapped, by Alloc and ArenaSlice when the
	// Arena has too little room left.
	ErrArenaFull = errors.New("arena is full")
	// ErrLimit is returned, wrapped, when MADV_UPM_MERGE fails with ENOSPC:
	// the process keeps as many pages in the kernel's UPM index as
	// /sys/kernel/mm/upm/max_pages_per_process allows. Closing Regions that
	// are no longer needed makes room; root can raise the limit.
	ErrLimit = errors.New("the process reached max_pages_per_process of the UPM kernel")
)

// detection is the memoised answer of the backend probe.
type detection struct {
	backend Backend
	// advice is MADV_UPM_MERGE's number, read from the kernel; 0 unless
	// backend is BackendUPM and the kernel told it.
	advice int
	// err says why backend cannot merge pages; it wraps ErrUnsupported.
	// It is nil when backend is usable.
	err error
	// forced is the value of UPM_BACKEND when it overrode detection.
	forced string
	// inconclusive is true when a probe failed for a reason that may pass
	// (EACCES, EPERM, ENOMEM): the answer is used once and not kept.
	inconclusive bool
}

var (
	// detectMu guards detected, the memoised answer: only a conclusive
	// answer is kept, as cilium/ebpf's feature probes do. A probe that
	// failed for EACCES, EPERM or ENOMEM may succeed at the next call.
	detectMu sync.Mutex
	detected *detection
	// probeSystem is what currentDetection asks; tests replace it.
	probeSystem = systemProbe
)

func currentDetection() detection {
	detectMu.Lock()
	defer detectMu.Unlock()
	if detected != nil {
		return *detected
	}
	d := detect(os.Getenv(EnvBackend), probeSystem())
	if !d.inconclusive {
		detected = &d
	}
	return d
}

// CurrentBackend returns the backend that Advise uses.
//
// The first call probes the kernel and reads UPM_BACKEND (see EnvBackend);
// a conclusive answer is kept for the life of the process. A probe that
// fails for a reason that may pass (a file it may not read, a page it could
// not map) is not remembered, and the next call probes again. Probing
// changes nothing: it does not register the process with ksmd. It is BackendUPM when
// /sys/kernel/mm/upm/advice names the MADV_UPM_MERGE advice, else BackendKSM
// when /sys/kernel/mm/ksm exists and the kernel accepts MADV_MERGEABLE, else
// BackendNone; BackendReason tells why a better backend was not chosen.
func CurrentBackend() Backend {
	return currentDetection().backend
}

// BackendReason returns nil when CurrentBackend can merge pages, and otherwise
// an error wrapping ErrUnsupported that says what is missing: no KSM in the
// kernel, not Linux, or a backend forced by UPM_BACKEND that the kernel does
// not offer. When the probe could not tell (EACCES, EPERM, ENOMEM), the
// error wraps that errno instead of ErrUnsupported, and the next call asks
// again. Advise returns the same error. Diagnose explains more, such as a
// stopped ksmd.
func BackendReason() error {
	return currentDetection().err
}

// probe is what detect asks the system; tests replace it.
type probe struct {
	// goos is the operating system, runtime.GOOS.
	goos string
	// upmAdvice reads MADV_UPM_MERGE's number from the kernel.
	upmAdvice func() (int, error)
	// ksm reports whether the kernel has KSM.
	ksm func() error
}

// Probes answer nil for "supported", an absentError for a conclusive "not
// supported", and any other error when they cannot tell.
func conclusive(err error) bool {
	var a absentError
	return err == nil || errors.As(err, &a)
}

// absentError says that the kernel conclusively lacks a feature.
type absentError struct{ error }

func (e absentError) Unwrap() error { return e.error }

// absent returns an absentError with the message format formats.
func absent(format string, args ...any) error {
	return absentError{fmt.Errorf(format, args...)}
}

// detect chooses the backend from the override value env and what p finds.
func detect(env string, p probe) detection {
	env = strings.ToLower(strings.TrimSpace(env))
	if p.goos != "linux" {
		d := detection{err: fmt.Errorf("UPM and KSM are Linux kernel features, this is %s: %w", p.goos, ErrUnsupported)}
		if env != "" && env != "auto" {
			d.forced = env
		}
		return d
	}

	switch env {
	case "", "auto":
		advice, upmErr := p.upmAdvice()
		if upmErr == nil {
			return detection{backend: BackendUPM, advice: advice}
		}
		ksmErr := p.ksm()
		unsure := !conclusive(upmErr) || !conclusive(ksmErr)
		switch {
		case ksmErr == nil:
			return detection{backend: BackendKSM, inconclusive: unsure}
		case unsure:
			return detection{inconclusive: true, err: fmt.Errorf("cannot tell whether the kernel has UPM (%v) or KSM (%v): %w", upmErr, ksmErr, errors.Join(inconclusiveErrs(upmErr, ksmErr)...))}
		}
		return detection{err: fmt.Errorf("kernel has neither UPM (%v) nor KSM (%v): %w", upmErr, ksmErr, ErrUnsupported)}

	case "upm":
		d := detection{backend: BackendUPM, forced: env}
		advice, err := p.upmAdvice()
		switch {
		case err == nil:
			d.advice = advice
		case conclusive(err):
			d.err = fmt.Errorf("%s=upm, but the kernel does not offer MADV_UPM_MERGE (%v): %w", EnvBackend, err, ErrUnsupported)
		default:
			d.inconclusive = true
			d.err = fmt.Errorf("%s=upm, but cannot tell whether the kernel offers MADV_UPM_MERGE: %w", EnvBackend, err)
		}
		return d

	case "ksm":
		d := detection{backend: BackendKSM, forced: env}
		err := p.ksm()
		switch {
		case err == nil:
		case conclusive(err):
			d.err = fmt.Errorf("%s=ksm, but the kernel has no usable KSM (%v): %w", EnvBackend, err, ErrUnsupported)
		default:
			d.inconclusive = true
			d.err = fmt.Errorf("%s=ksm, but cannot tell whether the kernel has KSM: %w", EnvBackend, err)
		}
		return d

	case "none":
		return detection{forced: env, err: fmt.Errorf("merging disabled by %s=none: %w", EnvBackend, ErrUnsupported)}

	default:
		return detection{forced: env, err: fmt.Errorf("%s=%q is not one of upm, ksm, none or auto: %w", EnvBackend, env, ErrUnsupported)}
	}
}

// inconclusiveErrs returns the errors of errs that are not conclusive, so
// that the errno of an inconclusive probe stays underneath.
func inconclusiveErrs(errs ...error) []error {
	var out []error
	for _, err := range errs {
		if !conclusive(err) {
			out = append(out, err)
		}
	}
	return out
}
