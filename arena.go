// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"math"
	"reflect"
	"sync"
	"unsafe"
)

// arenaAlign is the alignment of Alloc, that of the largest scalar type.
const arenaAlign = 16

// Arena is off-heap, page-aligned memory to build shared data in: allocate
// from it, fill the allocations, then Seal it, which advises the memory and
// makes it read-only. The garbage collector does not scan or free arena
// memory, so it must not hold Go pointers; ArenaSlice refuses element types
// that contain them. An Arena is safe for concurrent use.
type Arena struct {
	// sealMu is held by Seal, across its system calls, and by Close, so
	// that the memory is not unmapped under a Seal. mu guards the fields
	// and is never held across a system call: Bytes, Len and Cap answer
	// while a Seal waits for a busy UPM kernel.
	sealMu  sync.Mutex
	mu      sync.Mutex
	mem     []byte // nil after Close
	used    int
	region  *Region
	sealed  bool
	sealing bool // a Seal is under way: Alloc fails as after it
}

// NewArena maps an arena of size bytes, rounded up to whole pages, of private
// anonymous memory, zeroed, without transparent huge pages (which would have
// to be split before they could merge). Pages cost memory only once written.
//
// It fails for a size that is not positive, for one the kernel cannot map
// (errors.Is(err, unix.ENOMEM)), and, outside Linux, with an error wrapping
// ErrUnsupported. NewArena works whatever the backend; Seal needs one.
func NewArena(size int) (*Arena, error) {
	if size <= 0 {
		return nil, fmt.Errorf("upm: new arena of %d bytes: size must be positive", size)
	}
	if size > math.MaxInt-pageSize {
		return nil, fmt.Errorf("upm: new arena of %d bytes: too large", size)
	}
	mem, err := mmapAnon(size)
	if err != nil {
		return nil, fmt.Errorf("upm: new arena of %d bytes: %w", size, err)
	}
	return &Arena{mem: mem}, nil
}

// Bytes returns all of the arena's memory, Cap bytes, or nil after Close.
// Alloc hands out parts of the same memory, so code that uses Bytes directly
// should not also use Alloc. After Seal the memory is read-only: a write to
// it faults (SIGSEGV), and so does any access after Close.
func (a *Arena) Bytes() []byte {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mem
}

// Cap returns the size of the arena in bytes, a multiple of the page size.
func (a *Arena) Cap() int {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return cap(a.mem)
}

// Len returns the bytes handed out by Alloc and ArenaSlice, alignment
// padding included.
func (a *Arena) Len() int {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used
}

// Alloc returns n zeroed bytes of the arena, aligned to 16 bytes. It fails
// with an error wrapping ErrArenaFull when fewer than n bytes are left,
// ErrSealed after Seal, and ErrClosed after Close.
func (a *Arena) Alloc(n int) ([]byte, error) {
	p, err := a.alloc(n, arenaAlign, "alloc %d bytes", n)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), n), nil
}

// ArenaSlice returns a slice of n zeroed elements of type T in the arena,
// aligned for T. T must hold no Go pointers (no pointers, strings, slices,
// maps, channels, functions or interfaces), as the garbage collector does not
// see arena memory; ArenaSlice returns an error for such a T. Other errors
// are those of Alloc.
func ArenaSlice[T any](a *Arena, n int) ([]T, error) {
	t := reflect.TypeFor[T]()
	if p := pointerType(t); p != nil {
		return nil, fmt.Errorf("upm: arena slice of %d %v: %v holds Go pointers (%v), which the garbage collector does not see in arena memory", n, t, t, p)
	}
	size := int(t.Size())
	if size == 0 {
		// Nothing to carve out, but the arena must be as usable as for
		// any other type: not closed, not sealed.
		if _, err := a.alloc(0, 1, "arena slice of %d %v", n, t); err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, fmt.Errorf("upm: arena slice of %d %v: negative length", n, t)
		}
		return make([]T, n), nil
	}
	if n > math.MaxInt/size {
		return nil, fmt.Errorf("upm: arena slice of %d %v: %w", n, t, ErrArenaFull)
	}
	p, err := a.alloc(n*size, t.Align(), "arena slice of %d %v", n, t)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*T)(p), n), nil
}

// alloc carves n bytes aligned to align out of the arena; what describes the
// request in errors.
func (a *Arena) alloc(n, align int, what string, args ...any) (unsafe.Pointer, error) {
	if a == nil {
		return nil, fmt.Errorf("upm: "+what+": nil Arena: %w", append(args, ErrClosed)...)
	}
	if n < 0 {
		return nil, fmt.Errorf("upm: "+what+": negative size", args...)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.mem == nil:
		return nil, fmt.Errorf("upm: "+what+": %w", append(args, ErrClosed)...)
	case a.sealed || a.sealing:
		return nil, fmt.Errorf("upm: "+what+": %w", append(args, ErrSealed)...)
	}
	start := (a.used + align - 1) &^ (align - 1)
	if start > len(a.mem) || n > len(a.mem)-start {
		return nil, fmt.Errorf("upm: "+what+": %d of %d bytes left: %w", append(args, len(a.mem)-min(start, len(a.mem)), len(a.mem), ErrArenaFull)...)
	}
	if n == 0 {
		return unsafe.Pointer(unsafe.SliceData(a.mem)), nil
	}
	a.used = start + n
	return unsafe.Pointer(&a.mem[start]), nil
}

// Seal advises the whole arena as Advise does, and makes it read-only
// (mprotect PROT_READ); pages never written are not present and cost nothing.
// Writes after Seal fault with SIGSEGV rather than corrupt shared data. The
// Region lives until Close, or until Unadvise if that comes first.
//
// Seal fails with an error wrapping ErrSealed the second time, ErrClosed
// after Close, and ErrUnsupported where CurrentBackend cannot merge pages.
// A Seal that fails leaves the arena writable and unsealed, so it can be
// sealed again; if the kernel advised part of it before it failed, Seal
// returns the Region that owns that advice along with the error, as Advise
// does. Alloc fails with ErrSealed while Seal is under way; Bytes, Len and
// Cap do not wait for it.
func (a *Arena) Seal() (*Region, error) {
	stack := callers()
	if a == nil {
		return nil, &AdviseError{Op: "seal", Err: fmt.Errorf("nil Arena: %w", ErrClosed)}
	}
	a.sealMu.Lock()
	defer a.sealMu.Unlock()
	a.mu.Lock()
	switch {
	case a.mem == nil:
		a.mu.Unlock()
		return nil, &AdviseError{Op: "seal", Err: ErrClosed}
	case a.sealed:
		a.mu.Unlock()
		return nil, &AdviseError{Op: "seal", Addr: addrOf(a.mem), Len: len(a.mem), Err: ErrSealed}
	}
	mem, old := a.mem, a.region
	a.sealing = true
	a.mu.Unlock()

	// A Region left by an earlier Seal that failed part of the way gives
	// its advice to the new one.
	old.release()
	region, err := adviseMem("seal", mem, kindArena, "", stack)
	if err == nil {
		if perr := protect(mem, false); perr != nil {
			err = &AdviseError{Op: "seal", Addr: addrOf(mem), Len: len(mem), Err: perr}
		}
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	a.sealing = false
	a.region = region
	if err != nil {
		return region, err
	}
	a.sealed = true
	return region, nil
}

// Close unmaps the arena. Slices from Bytes, Alloc and ArenaSlice must not be
// used afterwards. Unmapping releases merged pages without copying them. A
// second Close returns an error wrapping ErrClosed and does nothing else.
// Close waits for a Seal under way.
func (a *Arena) Close() error {
	if a == nil {
		return fmt.Errorf("upm: close nil Arena: %w", ErrClosed)
	}
	a.sealMu.Lock()
	defer a.sealMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.mem == nil {
		return fmt.Errorf("upm: close arena: %w", ErrClosed)
	}
	if a.region != nil {
		a.region.release()
	}
	mem := a.mem
	a.mem = nil
	if err := munmap(mem); err != nil {
		return fmt.Errorf("upm: close arena of %d bytes at %#x: %w", len(mem), addrOf(mem), err)
	}
	return nil
}

// pointerType returns the type within t that makes values of t hold pointers
// the garbage collector must see, or nil if they hold none.
func pointerType(t reflect.Type) reflect.Type {
	switch t.Kind() {
	case reflect.Array:
		if t.Len() == 0 {
			return nil
		}
		return pointerType(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if p := pointerType(t.Field(i).Type); p != nil {
				return p
			}
		}
		return nil
	case reflect.Pointer, reflect.UnsafePointer, reflect.String, reflect.Slice,
		reflect.Map, reflect.Chan, reflect.Func, reflect.Interface:
		return t
	default:
		return nil
	}
}
