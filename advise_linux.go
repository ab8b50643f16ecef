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
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// adviseRetries bounds the retries of an madvise that fails with EAGAIN,
// which MADV_UPM_MERGE returns when it meets a page in transition.
const adviseRetries = 5

// madvise applies advice to mem, retrying transient EAGAIN failures. The
// advice is a named constant of x/sys/unix or, for MADV_UPM_MERGE, the
// number the kernel published in sysfs, which x/sys cannot know; hence the
// raw system call.
func madvise(mem []byte, advice int) error {
	for attempt := 0; ; attempt++ {
		_, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(unsafe.Pointer(unsafe.SliceData(mem))), uintptr(len(mem)), uintptr(advice))
		if errno == 0 {
			return nil
		}
		if errno == unix.EAGAIN && attempt < adviseRetries {
			time.Sleep(time.Duration(attempt+1) * time.Millisecond)
			continue
		}
		return errno
	}
}

func sysAdvise(mem []byte, d detection) error {
	advice, name := unix.MADV_MERGEABLE, "MADV_MERGEABLE"
	if d.backend == BackendUPM {
		advice, name = d.advice, "MADV_UPM_MERGE"
	}
	if err := madvise(mem, advice); err != nil {
		// The kernel may have advised the mappings it passed before it
		// failed (those around a hole, say); take that back, so that a
		// failed Advise leaves no advice behind that no Region owns.
		// After EINTR the process is dying and there is no point.
		if !errors.Is(err, unix.EINTR) {
			_ = madvise(mem, unix.MADV_UNMERGEABLE)
		}
		if d.backend == BackendUPM && errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("upm: advise %d bytes at %#x: %s: %w: %w", len(mem), addrOf(mem), name, ErrLimit, err)
		}
		return fmt.Errorf("upm: advise %d bytes at %#x: %s: %w", len(mem), addrOf(mem), name, err)
	}
	return nil
}

func sysUnadvise(mem []byte) error {
	if err := madvise(mem, unix.MADV_UNMERGEABLE); err != nil {
		return fmt.Errorf("upm: unadvise %d bytes at %#x: MADV_UNMERGEABLE: %w", len(mem), addrOf(mem), err)
	}
	return nil
}

// sysMapped reports whether every page of mem is mapped: msync fails with
// ENOMEM on a range with holes, and with MS_ASYNC does nothing else.
func sysMapped(mem []byte) bool {
	return !errors.Is(unix.Msync(mem, unix.MS_ASYNC), unix.ENOMEM)
}

// Bits of /proc/self/pagemap entries and /proc/kpageflags, from
// Documentation/admin-guide/mm/pagemap.rst.
const (
	pagemapPresent = 1 << 63
	pagemapPFNMask = 1<<55 - 1
	kpfAnon        = 1 << 12
	kpfKSM         = 1 << 21
)

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

// mergedBytes counts the bytes of mem backed by KSM pages: exactly from page
// frame flags when the process may read them, else from the KSM lines of the
// mappings in smaps.
func mergedBytes(mem []byte, smaps *smapsCache) (int64, bool, error) {
	if n, ok := pageFlagsMerged(mem); ok {
		return n, true, nil
	}
	vmas, err := smaps.get()
	if err != nil {
		return 0, false, fmt.Errorf("upm: merged %d bytes at %#x: %w", len(mem), addrOf(mem), err)
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

// countPageFlags counts the pages of mem whose flags have any bit of mask set,
// from the page frame numbers in /proc/self/pagemap and the flags in
// /proc/kpageflags. It reports false when either is out of reach: page frame
// numbers read as zero without CAP_SYS_ADMIN, and kpageflags is readable by
// root only.
func countPageFlags(mem []byte, mask uint64) (int, bool) {
	pagemap, err := os.Open(procPagemap)
	if err != nil {
		return 0, false
	}
	defer pagemap.Close()
	kpageflags, err := os.Open(procKPageFlag)
	if err != nil {
		return 0, false
	}
	defer kpageflags.Close()

	// The frames of the present pages, from pagemap.
	const chunk = 512 // entries per read
	var buf [8 * chunk]byte
	first := addrOf(mem) / uintptr(pageSize)
	pages := len(mem) / pageSize
	var frames []uint64
	for done := 0; done < pages; {
		n := min(chunk, pages-done)
		entries := buf[:8*n]
		if _, err := pagemap.ReadAt(entries, int64(first+uintptr(done))*8); err != nil && !errors.Is(err, io.EOF) {
			return 0, false
		}
		for i := range n {
			entry := binary.NativeEndian.Uint64(entries[8*i:])
			if entry&pagemapPresent == 0 {
				continue
			}
			pfn := entry & pagemapPFNMask
			if pfn == 0 {
				return 0, false // frame numbers hidden: no CAP_SYS_ADMIN
			}
			frames = append(frames, pfn)
		}
		done += n
	}

	// Their flags, from kpageflags: merged pages share frames, and the
	// frames of other pages are often consecutive, so read each distinct
	// frame once, consecutive frames in one read.
	slices.Sort(frames)
	count := 0
	for i := 0; i < len(frames); {
		// frames[i:j] are consecutive frame numbers, repeats included.
		j := i + 1
		for j < len(frames) && frames[j]-frames[j-1] <= 1 && frames[j]-frames[i] < chunk {
			j++
		}
		span := int(frames[j-1]-frames[i]) + 1
		flags := buf[:8*span]
		if _, err := kpageflags.ReadAt(flags, int64(frames[i])*8); err != nil {
			return 0, false
		}
		for _, pfn := range frames[i:j] {
			if binary.NativeEndian.Uint64(flags[8*(pfn-frames[i]):])&mask != 0 {
				count++
			}
		}
		i = j
	}
	return count, true
}
