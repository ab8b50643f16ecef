// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Region is a page-aligned range of memory that was advised as shareable.
//
// A Region is safe for concurrent use, and its methods are safe on a nil
// *Region, as Advise returns where it fails. Status says whether its memory
// is merged now, will be, or will not be. Regions of overlapping memory are
// not nested: Unadvise on one takes the advice off the memory of both.
type Region struct {
	mu      sync.Mutex
	mem     []byte // nil once unadvised or unmapped
	addr    uintptr
	size    int
	backend Backend
	kind    string // "slice", "file" or "arena", for profiles
	label   string // the file of a Mapping, for profiles
	stack   []uintptr
	seq     uint64
	// failed is the error of an Advise that failed part of the way, after
	// the kernel had advised some of the memory; nil for a good Advise.
	failed error
	// unadvising is true while an Unadvise is in the kernel, which is done
	// without holding mu: on a busy UPM kernel MADV_UNMERGEABLE takes
	// seconds, and Len, Merged and Diagnose must not wait for it.
	unadvising bool
}

// Kinds of Region, as profile labels.
const (
	kindSlice = "slice"
	kindFile  = "file"
	kindArena = "arena"
)

var regionSeq atomic.Uint64

func newRegion(mem []byte, b Backend, kind, label string, stack []uintptr, failed error) *Region {
	r := &Region{
		mem:     mem,
		addr:    addrOf(mem),
		size:    len(mem),
		backend: b,
		kind:    kind,
		label:   label,
		stack:   stack,
		seq:     regionSeq.Add(1),
		failed:  failed,
	}
	register(r)
	return r
}

// Addr returns the address of the first advised byte, a multiple of the page
// size.
func (r *Region) Addr() uintptr {
	if r == nil {
		return 0
	}
	return r.addr
}

// Len returns the number of advised bytes, a multiple of the page size. It
// does not change when the Region is unadvised.
func (r *Region) Len() int {
	if r == nil {
		return 0
	}
	return r.size
}

// Backend returns the backend that advised the Region.
func (r *Region) Backend() Backend {
	if r == nil {
		return BackendNone
	}
	return r.backend
}

// Unadvise takes the advice off the Region's memory (MADV_UNMERGEABLE): merged
// pages are copied back into private pages, which can take time and memory,
// and the kernel stops considering the pages. The Region leaves the registry
// and no longer keeps its memory reachable.
//
// Unadvise on a Region that was already unadvised, or whose Mapping or Arena
// was closed, returns an error wrapping ErrClosed; so does a call while
// another Unadvise of the same Region is under way. If the kernel fails, the
// Region stays advised so the call can be repeated, unless the memory is no
// longer mapped (ENOMEM), in which case there is nothing left to unadvise and
// the Region is released all the same. No lock is held while the kernel
// works, so the Region's other methods answer meanwhile.
func (r *Region) Unadvise() error {
	if r == nil {
		return &AdviseError{Op: "unadvise", Err: fmt.Errorf("nil Region: %w", ErrClosed)}
	}
	r.mu.Lock()
	if r.mem == nil || r.unadvising {
		r.mu.Unlock()
		return &AdviseError{Op: "unadvise", Addr: r.addr, Len: r.size, Err: ErrClosed}
	}
	mem := r.mem
	r.unadvising = true
	r.mu.Unlock()

	err := sysUnadvise(mem)
	unmapped := err != nil && !sysMapped(mem)

	r.mu.Lock()
	defer r.mu.Unlock()
	r.unadvising = false
	if err == nil || unmapped {
		r.releaseLocked()
	}
	return err
}

// release forgets the Region's memory without a system call, for a Mapping or
// Arena whose memory is about to be unmapped.
func (r *Region) release() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.releaseLocked()
}

func (r *Region) releaseLocked() {
	if r.mem != nil {
		r.mem = nil
		unregister(r)
	}
}

// Merged reports how many bytes of the Region are currently backed by pages
// merged with others, reading the kernel's page tables in bounded chunks (a
// few KiB whatever the Region's size). Its precision depends on what the
// process may read:
//
//   - With CAP_SYS_ADMIN, on a kernel whose KPF_KSM marks KSM pages only,
//     it counts KSM pages by their page flags (/proc/self/pagemap and
//     /proc/kpageflags), and ok is true. A KSM page stays one when its
//     other mappings go away, so the count can include pages that are, for
//     now, mapped only here.
//   - Otherwise it counts the present pages that /proc/self/pagemap shows
//     as not mapped exclusively by this process (bit 56), which needs no
//     privilege: merged pages that have another sharer now, which is what
//     merging saves, but also pages still shared copy-on-write with a
//     forked process. ok is false.
//   - Where pagemap cannot be read, it sums the KSM lines of
//     /proc/self/smaps (Linux 6.4 and later) of the mappings inside the
//     Region: ok is true when the Region is made of whole mappings, and the
//     count a lower bound otherwise.
//
// A Region that was unadvised gives an error wrapping ErrClosed.
func (r *Region) Merged() (bytes int64, ok bool, err error) {
	if r == nil {
		return 0, false, &AdviseError{Op: "merged", Err: fmt.Errorf("nil Region: %w", ErrClosed)}
	}
	r.mu.Lock()
	mem := r.mem
	r.mu.Unlock()
	if mem == nil {
		return 0, false, &AdviseError{Op: "merged", Addr: r.addr, Len: r.size, Err: ErrClosed}
	}
	return mergedBytes(mem, &smapsCache{})
}
