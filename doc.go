// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Package upm lets a program tell the Linux kernel which of its memory is
// shareable, so that identical pages in many processes, such as the model
// weights or lookup tables that every instance of a serverless function
// loads, are backed by one physical copy.
//
// On a kernel with user-guided page merging (UPM), the madvise advice
// MADV_UPM_MERGE merges the advised pages with identical pages advised
// before, synchronously: when Advise returns, the memory is shared. On a
// stock kernel the package falls back to Kernel Samepage Merging (KSM): the
// pages are marked MADV_MERGEABLE and the ksmd thread merges them later, if
// an administrator has started it. Elsewhere (not Linux, or a kernel without
// KSM) every call returns an error wrapping ErrUnsupported, and the program
// goes on with unshared memory. CurrentBackend tells which applies, and
// Diagnose explains in plain words why memory will or will not be merged.
//
// Merged pages are read-only to the hardware: the first write to one gives
// the writer a private copy again, so merging never changes what a program
// reads or writes, only how much memory it takes.
//
// A complete use, in the function that loads the weights:
//
//	func loadModel(path string) (*Model, error) {
//		weights, err := decodeWeights(path) // []float32 on the Go heap
//		if err != nil {
//			return nil, err
//		}
//		region, err := upm.AdviseSlice(weights)
//		if err != nil && !errors.Is(err, upm.ErrUnsupported) {
//			return nil, err
//		}
//		if st := region.Status(); st.State == upm.StateNotMerging {
//			log.Printf("weights not shared: %s", st) // st.Code to alert on
//		}
//		// Keep the Region with the weights: an Unadvise, deferred
//		// here, would take the advice off as loadModel returns.
//		return &Model{weights: weights, region: region}, nil
//	}
//
// Errors are *AdviseError values; errors.Is finds the sentinels (ErrUnsupported,
// ErrTooSmall, ErrLimit, ...) and the kernel's errno through them. A failed
// Advise never takes advice off memory, its own or another Region's: when the
// kernel advised part of the range before it failed, Advise returns the
// Region that owns it along with the error.
//
// # Choosing where the data lives
//
// Advise and AdviseSlice advise memory the program already has, such as a
// slice decoded on the Go heap; only the whole pages inside it are advised,
// so small slices are better placed in an Arena. Element types that hold Go
// pointers are refused: their pages are never alike across processes.
//
// AdviseFile reads a file into a private, read-only, advised copy, for data
// whose page cache the instances do not share (a copy of the file per
// instance or deployment, network file systems) or that is decoded anyway.
// It leaves the page cache alone, which the next cold start reads from;
// DropPageCache drops it.
//
// MapFile maps a file read-only in place, without a copy: the page cache is
// shared by every process that maps the same file, with no merging at all.
// It suits formats usable as they lie on disk, read by all instances from one
// page-cache file system, container image layers on overlayfs included
// (their files share the lower layer's page cache across containers).
//
// NewArena gives off-heap memory to build tables in; Seal advises it and
// makes it read-only, so that a stray write faults instead of silently
// unsharing or corrupting the data.
//
// # Will it be merged?
//
// Region.Status answers at the call site: StateMerged (UPM merged it as it
// was advised), StatePending (ksmd will, in about Status.Estimate),
// StateNotMerging (ksmd stopped, a mapping that cannot merge, no backend, a
// process alone in its UPM merge domain), each with a stable Code. Diagnose
// explains the whole system the same way, as Findings.
//
// # Backends
//
// The environment variable UPM_BACKEND (see EnvBackend) overrides the
// detection: "upm", "ksm" or "none". A forced backend is never replaced by
// another: forcing "upm" on a kernel without UPM makes Advise fail.
//
// # Observing
//
// Region.Merged reports how much of a Region is merged, exactly with
// CAP_SYS_ADMIN and an estimate without (see its documentation).
// ReadProcessStats and ReadSystemStats read the kernel's counters, and
// WriteProfile writes a pprof profile of the advised and merged bytes by the
// call stack that advised them, for go tool pprof.
package upm
