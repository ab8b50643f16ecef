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
// A complete use:
//
//	weights := loadWeights() // []float32, decoded on the Go heap
//	region, err := upm.AdviseSlice(weights)
//	if err != nil && !errors.Is(err, upm.ErrUnsupported) {
//		return err
//	}
//	log.Print(upm.Diagnose())
//	defer region.Unadvise() // or keep it advised for the life of the process
//
// # Choosing where the data lives
//
// Advise and AdviseSlice advise memory the program already has, such as a
// slice decoded on the Go heap; only the whole pages inside it are advised,
// so small slices are better placed in an Arena.
//
// AdviseFile reads a file into a private, read-only, advised copy and drops
// the file's page cache, so that across instances one merged copy remains.
// It suits files whose page cache the instances do not share (container
// image layers on overlayfs, network file systems) or that are read once and
// decoded, and files on slow media whose cache would be dropped anyway.
//
// MapFile maps a file read-only in place, without a copy: the page cache is
// shared by every process that maps the same file, with no merging at all.
// It suits formats usable as they lie on disk, in a file that all instances
// read from one page-cache file system.
//
// NewArena gives off-heap memory to build tables in; Seal advises it and
// makes it read-only, so that a stray write faults instead of silently
// unsharing or corrupting the data.
//
// # Backends
//
// The environment variable UPM_BACKEND (see EnvBackend) overrides the
// detection: "upm", "ksm" or "none". A forced backend is never replaced by
// another: forcing "upm" on a kernel without UPM makes Advise fail.
//
// # Observing
//
// Region.Merged reports how much of a Region is merged. ReadProcessStats and
// ReadSystemStats read the kernel's counters, and WriteProfile writes a pprof
// profile of the advised and merged bytes by the call stack that advised
// them, for go tool pprof.
package upm
