// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// This file is the one reader of /proc/self/pagemap and /proc/kpageflags.
// Both are read in chunks of pagemapChunk entries, so counting the pages of
// a region of many GiB takes a few KiB of memory, not 8 bytes a page.

// Bits of /proc/self/pagemap entries and /proc/kpageflags, from
// Documentation/admin-guide/mm/pagemap.rst.
const (
	pagemapPresent   = 1 << 63
	pagemapExclusive = 1 << 56 // PM_MMAP_EXCLUSIVE: mapped by this process only
	pagemapPFNMask   = 1<<55 - 1
	kpfAnon          = 1 << 12
	kpfKSM           = 1 << 21
)

// pagemapChunk is the number of entries read at a time.
const pagemapChunk = 512

// walkPagemap calls fn with the pagemap entries of mem, in order, at most
// pagemapChunk at a time. The slice is reused between calls.
func walkPagemap(mem []byte, fn func(entries []uint64) error) error {
	f, err := os.Open(procPagemap)
	if err != nil {
		return err
	}
	defer f.Close()
	var buf [8 * pagemapChunk]byte
	var entries [pagemapChunk]uint64
	first := int64(addrOf(mem) / uintptr(pageSize))
	pages := len(mem) / pageSize
	for done := 0; done < pages; {
		n := min(pagemapChunk, pages-done)
		raw := buf[:8*n]
		if _, err := f.ReadAt(raw, (first+int64(done))*8); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read %s: %w", procPagemap, err)
		}
		for i := range n {
			entries[i] = binary.NativeEndian.Uint64(raw[8*i:])
		}
		if err := fn(entries[:n]); err != nil {
			return err
		}
		done += n
	}
	return nil
}

// errPFNsHidden is returned by countPageFlags when page frame numbers read as
// zero, as they do without CAP_SYS_ADMIN.
var errPFNsHidden = errors.New("page frame numbers hidden")

// countPageFlags counts the present pages of mem whose flags have any bit of
// mask set, from the page frame numbers in /proc/self/pagemap and the flags
// in /proc/kpageflags. It reports false when either is out of reach: page
// frame numbers read as zero without CAP_SYS_ADMIN, and kpageflags is
// readable by root only.
func countPageFlags(mem []byte, mask uint64) (int, bool) {
	kpageflags, err := os.Open(procKPageFlag)
	if err != nil {
		return 0, false
	}
	defer kpageflags.Close()
	var frames [pagemapChunk]uint64
	var flags [8 * pagemapChunk]byte
	count := 0
	err = walkPagemap(mem, func(entries []uint64) error {
		// The frames of the present pages of this chunk, sorted: merged
		// pages share frames, and the frames of other pages are often
		// consecutive, so each run of frames is one read.
		fs := frames[:0]
		for _, e := range entries {
			if e&pagemapPresent == 0 {
				continue
			}
			pfn := e & pagemapPFNMask
			if pfn == 0 {
				return errPFNsHidden
			}
			fs = append(fs, pfn)
		}
		slices.Sort(fs)
		for i := 0; i < len(fs); {
			j := i + 1
			for j < len(fs) && fs[j]-fs[j-1] <= 1 && fs[j]-fs[i] < pagemapChunk {
				j++
			}
			span := flags[:8*(fs[j-1]-fs[i]+1)]
			if _, err := kpageflags.ReadAt(span, int64(fs[i])*8); err != nil {
				return err
			}
			for _, pfn := range fs[i:j] {
				if binary.NativeEndian.Uint64(span[8*(pfn-fs[i]):])&mask != 0 {
					count++
				}
			}
			i = j
		}
		return nil
	})
	return count, err == nil
}

// sharedPages counts the present pages of mem that are not mapped
// exclusively by this process (pagemap bit 56, readable without privilege),
// and reports whether pagemap could be read. A merged page that has another
// sharer is not exclusive; neither is a page still shared copy-on-write with
// a forked parent or child, nor the zero page. A merged page left with this
// process as its only sharer is exclusive again, and not counted.
func sharedPages(mem []byte) (int, bool) {
	n := 0
	err := walkPagemap(mem, func(entries []uint64) error {
		for _, e := range entries {
			if e&pagemapPresent != 0 && e&pagemapExclusive == 0 {
				n++
			}
		}
		return nil
	})
	return n, err == nil
}

// presentPages counts the pages of mem that are in memory, from the present
// bit of /proc/self/pagemap, which needs no privilege.
func presentPages(mem []byte) (int, error) {
	n := 0
	err := walkPagemap(mem, func(entries []uint64) error {
		for _, e := range entries {
			if e&pagemapPresent != 0 {
				n++
			}
		}
		return nil
	})
	return n, err
}

// pfnsReadable reports whether this process can count merged pages exactly:
// it can read page frame numbers (CAP_SYS_ADMIN) and the flags file, and
// the kernel's KPF_KSM is right.
func pfnsReadable(kpageflags string) bool {
	f, err := os.Open(kpageflags)
	if err != nil {
		return false
	}
	f.Close()
	return hasCapability(capSysAdmin) && kpageflagsKSMReliable()
}

// smapsCache reads /proc/self/smaps once, when first needed, for counting
// the merged bytes of several regions.
type smapsCache struct {
	vmas []vma
	err  error
	read bool
}

func (c *smapsCache) get() ([]vma, error) {
	if !c.read {
		c.vmas, c.err = readSmaps()
		c.read = true
	}
	return c.vmas, c.err
}

// mergedBytes counts the bytes of mem backed by merged pages, by the most
// precise means at hand:
//
//   - with CAP_SYS_ADMIN and a kernel whose KPF_KSM is right, the KSM pages
//     by their page flags: exact (ok is true);
//   - else the present pages that pagemap shows as not mapped exclusively,
//     without privilege: merged pages that have another sharer now, the
//     memory merging saves, plus pages still shared with a forked process;
//     ok is false;
//   - else, when pagemap cannot be read, the KSM lines of the mappings in
//     smaps that lie inside mem: exact when mem is made of whole mappings
//     (Linux 6.4 and later print the line), a lower bound otherwise.
func mergedBytes(mem []byte, smaps *smapsCache) (int64, bool, error) {
	if n, ok := pageFlagsMerged(mem); ok {
		return n, true, nil
	}
	if n, ok := sharedPages(mem); ok {
		return int64(n) * int64(pageSize), false, nil
	}
	vmas, err := smaps.get()
	if err != nil {
		return 0, false, &AdviseError{Op: "merged", Addr: addrOf(mem), Len: len(mem), Err: err}
	}
	lo := addrOf(mem)
	hi := lo + uintptr(len(mem))
	var merged int64
	var covered uintptr
	exact := true
	for _, v := range overlapping(vmas, lo, hi) {
		ksm, has := v.bytes("KSM")
		if v.start < lo || v.end > hi || !has {
			exact = false
			continue
		}
		merged += ksm
		covered += v.size()
	}
	return merged, exact && covered == hi-lo, nil
}

// pageFlagsMerged counts the bytes of mem in KSM pages, from page flags.
func pageFlagsMerged(mem []byte) (int64, bool) {
	if !kpageflagsKSMReliable() {
		return 0, false
	}
	pages, ok := countPageFlags(mem, kpfKSM)
	return int64(pages) * int64(pageSize), ok
}

// kpageflagsKSMReliable reports whether /proc/kpageflags sets KPF_KSM on KSM
// pages only. Linux 6.12 (before "fs/proc/page: report KPF_KSM for KSM pages
// only", in our kernel series) tests the mapping against PAGE_MAPPING_KSM
// with a bitwise and, which every anonymous page passes. So ask the kernel:
// a page this process just wrote and never advised cannot be a KSM page.
// The answer is probed once.
var kpageflagsKSMReliable = sync.OnceValue(func() bool {
	mem, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return false
	}
	defer unix.Munmap(mem)
	mem[0] = 1
	anon, ok := countPageFlags(mem, kpfAnon)
	if !ok || anon != 1 {
		return false
	}
	ksm, ok := countPageFlags(mem, kpfKSM)
	return ok && ksm == 0
})
