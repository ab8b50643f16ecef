// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"os"
	"reflect"
	"runtime"
	"unsafe"
)

// pageSize is the size of a base page, the unit of merging.
var pageSize = os.Getpagesize()

// Advise tells the kernel that the page-aligned interior of b is shareable:
// identical pages in other processes (or elsewhere in this one) that were
// advised too may be backed by one read-only physical copy, copied again on
// the first write.
//
// Only whole pages inside b are advised: the start of b is rounded up and its
// end rounded down to a page boundary, so no byte outside b is ever affected.
// A b that holds no whole page (nil, empty, or smaller than a page) gives an
// error wrapping ErrTooSmall. Allocations of a few pages or more get whole
// pages from the Go runtime; for smaller tables, or to control the layout,
// use NewArena.
//
// With BackendUPM the pages that b's program has written are merged before
// Advise returns; pages never written are not present and are skipped. With
// BackendKSM the pages are marked mergeable and ksmd merges them later, if it
// runs (see Diagnose). With BackendNone, Advise returns an error wrapping
// ErrUnsupported and changes nothing. Kernel errors keep their errno:
// errors.Is(err, unix.ENOMEM) is true when part of b is not mapped, and
// errors.Is(err, unix.EINVAL) when the kernel refuses the memory, as UPM does
// for shared and hugetlb mappings. The error is an *AdviseError.
//
// A failed Advise never takes advice off memory: other Regions that overlap
// b keep theirs, and what the kernel merged before it failed stays merged.
// When the kernel may have advised part of b before it failed (ENOMEM: the
// mapped parts are advised, and merged by UPM; EINVAL: the mappings before
// the one UPM refused; EAGAIN, EINTR, ErrLimit: all of b is advised, and
// merged up to where the kernel stopped; EBUSY: all of b is advised and
// nothing merged, as KSM is unmerging everything (ksm/run is 2): advise again
// once run has left 2), Advise returns a Region together
// with the error. It owns that advice: keep it, as what merged is saved
// memory, or Unadvise it; its Status reports StatePartial. When nothing was
// advised the Region is nil.
//
// MADV_UPM_MERGE fails with EAGAIN when the kernel could not allocate its
// bookkeeping; the kernel's documentation allows repeating the call, and
// Advise leaves that to the caller, who knows whether memory is short: Advise
// on the same memory again merges what was not merged yet. Keep both Regions
// then, or neither: advice is not nested, so an Unadvise of either takes it
// off the memory of both.
//
// The returned Region refers to the memory and stays in the package's
// registry (see WriteProfile) until Unadvise, so the garbage collector does
// not free advised memory even if the caller drops b; no runtime.KeepAlive is
// needed for the advice. Unadvise when the data is no longer shared, or keep
// the Region for the life of the process, as is usual for model weights. Go's
// garbage collector does not move heap objects; should a future one move
// them, the advice would stay with the old addresses, as the kernel knows
// addresses and not objects. Memory that is freed behind the Region's back
// (an unix.Munmap of off-heap memory, say) loses its advice with its mapping:
// Unadvise then reports ENOMEM and Merged finds nothing.
func Advise(b []byte) (*Region, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	return advise(p, len(b), kindSlice, "", callers())
}

// AdviseSlice is Advise over the bytes of the elements of s, for tables of
// numbers such as []float32 model weights. Like Advise, it advises only the
// whole pages inside the elements' memory.
//
// T must hold no Go pointers (no pointers, strings, slices, maps, channels,
// functions or interfaces), as for ArenaSlice. Merging such memory would be
// safe, but it would not pay: pointers differ from process to process, so
// the pages are never identical, and for a []string the bytes that could
// merge are elsewhere. AdviseSlice returns an error for such a T.
func AdviseSlice[T any](s []T) (*Region, error) {
	var p unsafe.Pointer
	if t := reflect.TypeFor[T](); pointerType(t) != nil {
		return nil, &AdviseError{Op: "advise", Addr: uintptr(unsafe.Pointer(unsafe.SliceData(s))), Len: len(s) * int(t.Size()),
			Err: fmt.Errorf("%v holds Go pointers (%v), which differ between processes, so its pages never merge; advise the data they point to", t, pointerType(t))}
	}
	n := len(s) * int(unsafe.Sizeof(*new(T)))
	if n > 0 {
		p = unsafe.Pointer(unsafe.SliceData(s))
	}
	return advise(p, n, kindSlice, "", callers())
}

// advise validates the range [p, p+n) and advises its page-aligned interior.
func advise(p unsafe.Pointer, n int, kind, label string, stack []uintptr) (*Region, error) {
	mem, err := interior(p, n)
	if err != nil {
		return nil, err
	}
	return adviseMem("advise", mem, kind, label, stack)
}

// adviseMem advises mem, page-aligned, and returns the Region that owns the
// advice: Advise, AdviseFile and Arena.Seal all come here.
//
// A failed madvise is not undone. MADV_UNMERGEABLE over the range would take
// the advice off earlier Regions that overlap it too, and would copy back the
// pages the kernel merged, which it documents stay merged (EAGAIN, EINTR,
// ENOSPC, and ENOMEM for the mapped parts). So when the kernel may have
// advised some of the range, the Region is returned with the error, owning
// what was advised: its Status says so, and Unadvise takes it off.
func adviseMem(op string, mem []byte, kind, label string, stack []uintptr) (*Region, error) {
	d := currentDetection()
	if d.err != nil {
		return nil, &AdviseError{Op: op, Addr: addrOf(mem), Len: len(mem), Err: d.err}
	}
	err := sysAdvise(mem, d)
	if err == nil {
		return newRegion(mem, d.backend, kind, label, stack, nil), nil
	}
	err.Op = op
	if !sysAdvisedAny(mem) {
		return nil, err
	}
	return newRegion(mem, d.backend, kind, label, stack, err), err
}

// interior returns the whole pages inside [p, p+n), or an error wrapping
// ErrTooSmall if there are none.
func interior(p unsafe.Pointer, n int) ([]byte, error) {
	if p == nil || n <= 0 {
		return nil, &AdviseError{Op: "advise", Addr: uintptr(p), Len: max(n, 0), Err: ErrTooSmall}
	}
	start := uintptr(p)
	ps := uintptr(pageSize)
	first := (start + ps - 1) &^ (ps - 1)
	last := (start + uintptr(n)) &^ (ps - 1)
	if first < start || last <= first {
		return nil, &AdviseError{Op: "advise", Addr: start, Len: n, Err: fmt.Errorf("%w (%d-byte pages)", ErrTooSmall, pageSize)}
	}
	// unsafe.Add keeps the derived pointer inside b's object, which keeps
	// the object reachable for as long as the Region holds it.
	return unsafe.Slice((*byte)(unsafe.Add(p, first-start)), last-first), nil
}

// addrOf returns the address of b's first byte.
func addrOf(b []byte) uintptr {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}

// callers returns the stack of the caller of the exported function that
// calls it.
func callers() []uintptr {
	var pcs [64]uintptr
	// Skip runtime.Callers, callers and the exported function.
	n := runtime.Callers(3, pcs[:])
	return append([]uintptr(nil), pcs[:n]...)
}
