//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The fuzz targets of the package. Plain go test runs their seeds as
// ordinary tests, with whatever backend the machine has; go test -fuzz, and
// TestLibraryFuzz in the VM (internal/integration), explore further. None of
// them changes system-wide settings: they advise their own memory only.

// documentedAdviseError reports whether err is one that Advise documents:
// ErrTooSmall, ErrUnsupported, or the kernel's ENOMEM and EINVAL.
func documentedAdviseError(err error) bool {
	return errors.Is(err, ErrTooSmall) || errors.Is(err, ErrUnsupported) ||
		errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EINVAL)
}

// mergeableIn reports whether any mapping overlapping mem is marked
// mergeable (VmFlags mg), which a failed Advise or an Unadvise must not
// leave behind.
func mergeableIn(t *testing.T, lo, hi uintptr) bool {
	t.Helper()
	vmas, err := readSmaps()
	require.NoError(t, err)
	for _, v := range overlapping(vmas, lo, hi) {
		if v.hasFlag("mg") {
			return true
		}
	}
	return false
}

// Kinds of memory FuzzAdvise advises.
const (
	memAnon       = iota // private anonymous mapping, partly written
	memHole              // the same with one page unmapped
	memShared            // MAP_SHARED anonymous: UPM refuses it
	memReadOnly          // written, then PROT_READ
	memHeap              // a []byte of the Go heap
	memHeapUint32        // a []uint32 of the Go heap, through AdviseSlice
	memKinds
)

// FuzzAdvise advises a random part of memory of each kind: the result must be
// the page-aligned interior of what was passed, or an error Advise
// documents; the data must not change; and after a failed Advise, or after
// Unadvise, nothing of a mapping of ours may stay marked mergeable.
func FuzzAdvise(f *testing.F) {
	for kind := range memKinds {
		f.Add(uint8(kind), uint16(0), uint32(8*pageSize), uint8(3))
		f.Add(uint8(kind), uint16(1), uint32(2*pageSize), uint8(1))
		f.Add(uint8(kind), uint16(pageSize-1), uint32(pageSize+1), uint8(2))
		f.Add(uint8(kind), uint16(100), uint32(0), uint8(0))
		f.Add(uint8(kind), uint16(pageSize), uint32(5*pageSize-7), uint8(7))
	}
	f.Fuzz(func(t *testing.T, kind uint8, off uint16, length uint32, seed uint8) {
		const pages = 8
		size := pages * pageSize
		var mem []byte  // the whole buffer
		var hole []byte // the page unmapped, for memHole
		switch kind % memKinds {
		case memAnon, memHole, memReadOnly:
			m, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
			require.NoError(t, err)
			mem = m
		case memShared:
			m, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
			require.NoError(t, err)
			mem = m
		default:
			mem = make([]byte, size)
		}
		if kind%memKinds < memHeap {
			defer unix.Munmap(mem)
		}
		// Write some pages, many of them alike, so that some merge.
		for i := 0; i < pages; i++ {
			if (seed>>(i%8))&1 != 0 {
				mem[i*pageSize] = byte(i % 3)
				mem[i*pageSize+pageSize-1] = seed
			}
		}
		switch kind % memKinds {
		case memHole:
			hole = mem[3*pageSize : 4*pageSize]
			require.NoError(t, unix.MunmapPtr(unsafe.Pointer(&hole[0]), uintptr(pageSize)))
		case memReadOnly:
			require.NoError(t, unix.Mprotect(mem, unix.PROT_READ))
		}

		start := int(off) % (size + 1)
		n := int(length) % (size - start + 1)
		b := mem[start : start+n]
		var want []byte
		if hole == nil {
			want = bytes.Clone(b)
		}

		var r *Region
		var err error
		if kind%memKinds == memHeapUint32 && n >= 4 {
			// The same bytes, as elements: a tail of n%4 bytes is not in s.
			s := unsafe.Slice((*uint32)(unsafe.Pointer(&b[0])), n/4)
			r, err = AdviseSlice(s)
			b = b[:n/4*4]
		} else {
			r, err = Advise(b)
		}

		lo := (addrOf(b) + uintptr(pageSize) - 1) &^ uintptr(pageSize-1)
		hi := (addrOf(b) + uintptr(len(b))) &^ uintptr(pageSize-1)
		if len(b) == 0 {
			lo, hi = 0, 0
		}
		holeLo := addrOf(hole)
		holed := hole != nil && holeLo < hi && holeLo+uintptr(pageSize) > lo
		switch {
		case len(b) == 0 || hi <= lo:
			require.ErrorIs(t, err, ErrTooSmall)
		case BackendReason() != nil:
			require.ErrorIs(t, err, ErrUnsupported)
		case holed:
			require.ErrorIs(t, err, unix.ENOMEM, "advise over a hole")
		case kind%memKinds == memShared && CurrentBackend() == BackendUPM:
			require.ErrorIs(t, err, unix.EINVAL, "UPM refuses shared memory")
		default:
			require.NoError(t, err)
		}
		if err != nil {
			require.True(t, documentedAdviseError(err), "undocumented error %v", err)
			// A failed Advise leaves what the kernel advised to a Region
			// it returns, and nothing advised without one.
			if r != nil {
				require.Equal(t, StatePartial, r.Status().State)
				if uerr := r.Unadvise(); uerr != nil {
					require.ErrorIs(t, uerr, unix.ENOMEM, "Unadvise of a partly advised Region")
				}
				require.NotContains(t, liveRegions(), r)
			}
			if kind%memKinds < memHeap && hi > lo {
				assert.False(t, mergeableIn(t, lo, hi),
					"advice left behind that no Region owns: %v", err)
			}
		} else {
			require.Equal(t, lo, r.Addr())
			require.Equal(t, int(hi-lo), r.Len())
			require.Equal(t, CurrentBackend(), r.Backend())
			merged, _, err := r.Merged()
			require.NoError(t, err)
			assert.True(t, merged >= 0 && merged <= int64(r.Len()), "merged %d of %d bytes", merged, r.Len())
			require.NoError(t, r.Unadvise())
			require.ErrorIs(t, r.Unadvise(), ErrClosed)
			_, _, err = r.Merged()
			require.ErrorIs(t, err, ErrClosed)
			if kind%memKinds < memHeap {
				assert.False(t, mergeableIn(t, lo, hi), "Unadvise left advice behind")
			}
		}
		if want != nil {
			require.Equal(t, want[:len(b)], b, "advising changed the data")
		}
		runtime.KeepAlive(mem)
	})
}

// Kinds of file FuzzAdviseFile opens.
const (
	fileRegular   = iota // the content, as written
	fileTruncated        // truncated after it was read
	fileRemoved          // removed after it was read
	fileMissing          // never created
	fileDir              // a directory
	fileFIFO             // a named pipe, which must not block the open
	fileSymlink          // a symbolic link to the content
	fileKinds
)

// FuzzAdviseFile reads files of random sizes and contents with AdviseFile and
// MapFile: the data must be the file's, stay so when the file is truncated or
// removed afterwards (AdviseFile's is a private copy), and every failure must
// be one of the documented ones.
func FuzzAdviseFile(f *testing.F) {
	for kind := range fileKinds {
		f.Add(uint8(kind), []byte("weights"), uint32(0), int64(0), false)
		f.Add(uint8(kind), []byte{0}, uint32(3*pageSize), int64(2*pageSize), true)
		f.Add(uint8(kind), []byte{}, uint32(0), int64(0), false)
		f.Add(uint8(kind), []byte("x"), uint32(pageSize-1), int64(-1), false)
	}
	f.Fuzz(func(t *testing.T, kind uint8, content []byte, grow uint32, limit int64, keep bool) {
		dir := t.TempDir()
		path := filepath.Join(dir, "file")
		// content repeated to grow more bytes, up to 64 pages in all.
		data := bytes.Clone(content)
		for extra := int(grow % (64 * uint32(pageSize))); extra > 0 && len(content) > 0; {
			n := min(extra, len(content))
			data = append(data, content[:n]...)
			extra -= n
		}
		switch kind % fileKinds {
		case fileDir:
			require.NoError(t, os.Mkdir(path, 0o755))
		case fileFIFO:
			require.NoError(t, unix.Mkfifo(path, 0o644))
		case fileMissing:
		case fileSymlink:
			require.NoError(t, os.WriteFile(path+".target", data, 0o644))
			require.NoError(t, os.Symlink(path+".target", path))
		default:
			require.NoError(t, os.WriteFile(path, data, 0o644))
		}
		after := func() {
			switch kind % fileKinds {
			case fileTruncated:
				require.NoError(t, os.Truncate(path, int64(len(data)/2)))
			case fileRemoved:
				require.NoError(t, os.Remove(path))
			}
		}
		notFile := kind%fileKinds == fileDir || kind%fileKinds == fileFIFO

		var opts []FileOption
		if !keep {
			opts = append(opts, DropPageCache())
		}
		if limit != 0 {
			opts = append(opts, MaxFileSize(limit))
		}
		m, err := AdviseFile(path, opts...)
		switch {
		case BackendReason() != nil:
			require.ErrorIs(t, err, ErrUnsupported)
		case kind%fileKinds == fileMissing:
			require.ErrorIs(t, err, fs.ErrNotExist)
		case notFile:
			require.ErrorContains(t, err, "not a regular file")
		case len(data) == 0:
			require.ErrorIs(t, err, ErrTooSmall)
		case limit > 0 && int64(len(data)) > limit:
			require.ErrorContains(t, err, "exceed the limit")
		default:
			require.NoError(t, err)
			after()
			require.Equal(t, len(data), m.Len())
			require.True(t, bytes.Equal(data, m.Bytes()), "AdviseFile's data differs from the file's")
			r := m.Region()
			require.NotNil(t, r)
			require.Equal(t, (len(data)+pageSize-1)&^(pageSize-1), r.Len())
			_, _, err := r.Merged()
			require.NoError(t, err)
			require.NoError(t, m.Close())
			require.ErrorIs(t, m.Close(), ErrClosed)
			require.Nil(t, m.Bytes())
			require.ErrorIs(t, r.Unadvise(), ErrClosed)
		}
		if err != nil {
			require.Nil(t, m)
		}

		// MapFile maps the file itself, whatever the backend.
		if kind%fileKinds == fileTruncated || kind%fileKinds == fileRemoved {
			require.NoError(t, os.WriteFile(path, data, 0o644))
		}
		m, err = MapFile(path)
		switch {
		case kind%fileKinds == fileMissing:
			require.ErrorIs(t, err, fs.ErrNotExist)
			return
		case notFile:
			require.ErrorContains(t, err, "not a regular file")
			return
		}
		require.NoError(t, err)
		require.Nil(t, m.Region())
		require.Equal(t, len(data), m.Len())
		require.True(t, bytes.Equal(data, m.Bytes()), "MapFile's data differs from the file's")
		if kind%fileKinds == fileRemoved {
			// A removed file stays mapped. (A truncated one faults past
			// its new end, as documented: not tried here.)
			after()
			require.True(t, bytes.Equal(data, m.Bytes()), "a removed file's mapping changed")
		}
		require.NoError(t, m.Close())
		require.ErrorIs(t, m.Close(), ErrClosed)
		require.Nil(t, m.Bytes())
	})
}

// faults reports whether f faults on arena memory, with the fault turned
// into a panic (debug.SetPanicOnFault) instead of killing the process.
func faults(f func()) (faulted bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if e := recover(); e != nil {
			if _, ok := e.(interface{ Addr() uintptr }); ok {
				faulted = true
				return
			}
			panic(e)
		}
	}()
	f()
	return false
}

// FuzzArena runs a script of arena operations (Alloc, ArenaSlice, Seal,
// writes after Seal, Unadvise, Close) on an arena of a random size: every
// allocation must be zeroed, aligned, inside the arena and apart from the
// others, errors must be the documented ErrArenaFull, ErrSealed and
// ErrClosed, and a write after Seal must fault without changing the data.
func FuzzArena(f *testing.F) {
	f.Add(int64(1), []byte{0, 1, 2, 3, 4, 5, 6, 7})
	f.Add(int64(3*pageSize+5), []byte{0x10, 0x21, 0x40, 0x52, 3, 4, 0x05, 6, 7})
	f.Add(int64(0), []byte{0})
	f.Add(int64(-1), []byte{0})
	f.Add(int64(math.MaxInt64), []byte{0})
	f.Add(int64(math.MaxInt64-int64(pageSize)+1), []byte{})
	f.Add(int64(1<<62), []byte{3})
	f.Add(int64(pageSize), []byte{0xf0, 0xf0, 0xf0, 0x03, 0x04, 0xf0, 0x05, 0x06, 0x06})
	f.Fuzz(func(t *testing.T, size int64, script []byte) {
		if size > 1<<24 && size < 1<<46 {
			size %= 1 << 24 // a few MiB are enough; huge sizes must just fail
		}
		a, err := NewArena(int(size))
		if size <= 0 {
			require.Error(t, err)
			require.Nil(t, a)
			return
		}
		if err != nil || size > 1<<24 {
			// Only sizes beyond what the machine has may fail.
			require.Greater(t, size, int64(1<<24), "NewArena(%d): %v", size, err)
			if a != nil {
				require.NoError(t, a.Close())
			}
			return
		}
		require.Equal(t, (int(size)+pageSize-1)&^(pageSize-1), a.Cap())

		type alloc struct {
			b    []byte
			fill byte
		}
		var allocs []alloc
		var region *Region
		sealed, closed := false, false
		for i, op := range script {
			arg := int(op >> 3)
			switch op & 7 {
			case 0, 1: // Alloc of a size that grows with arg
				n := arg * arg * 37 % (a.Cap() + 64)
				if op&7 == 1 {
					n = -n
				}
				b, err := a.Alloc(n)
				switch {
				case n < 0:
					require.Error(t, err)
				case closed:
					require.ErrorIs(t, err, ErrClosed)
				case sealed:
					require.ErrorIs(t, err, ErrSealed)
				case err != nil:
					require.ErrorIs(t, err, ErrArenaFull)
					require.Greater(t, n, a.Cap()-(a.Len()+arenaAlign-1)&^(arenaAlign-1))
				default:
					require.Len(t, b, n)
					require.LessOrEqual(t, a.Len(), a.Cap())
					if n > 0 {
						base := addrOf(a.Bytes())
						p := addrOf(b)
						require.Zero(t, p%arenaAlign)
						require.True(t, p >= base && p+uintptr(n) <= base+uintptr(a.Cap()), "allocation outside the arena")
						require.Equal(t, make([]byte, n), b, "allocation not zeroed")
						for j := range b {
							b[j] = byte(i + 1)
						}
						allocs = append(allocs, alloc{b, byte(i + 1)})
					}
				}
			case 2: // ArenaSlice of uint64 and of an empty type
				s, err := ArenaSlice[uint64](a, arg)
				switch {
				case closed:
					require.ErrorIs(t, err, ErrClosed)
				case sealed:
					require.ErrorIs(t, err, ErrSealed)
				case err != nil:
					require.ErrorIs(t, err, ErrArenaFull)
				default:
					require.Len(t, s, arg)
					if arg > 0 {
						require.Zero(t, uintptr(unsafe.Pointer(&s[0]))%8)
					}
				}
				// A zero-size type takes no room, but a closed or
				// sealed arena refuses it all the same.
				e, err := ArenaSlice[struct{}](a, arg)
				switch {
				case closed:
					require.ErrorIs(t, err, ErrClosed)
				case sealed:
					require.ErrorIs(t, err, ErrSealed)
				default:
					require.NoError(t, err)
					require.Len(t, e, arg)
				}
				_, err = ArenaSlice[*int](a, arg)
				require.Error(t, err, "pointers in arena memory")
			case 3: // Seal
				r, err := a.Seal()
				switch {
				case closed:
					require.ErrorIs(t, err, ErrClosed)
				case sealed:
					require.ErrorIs(t, err, ErrSealed)
				case BackendReason() != nil:
					require.ErrorIs(t, err, ErrUnsupported)
				default:
					require.NoError(t, err)
					require.Equal(t, a.Cap(), r.Len())
					sealed, region = true, r
				}
			case 4: // a write after Seal faults and changes nothing
				if !sealed || closed || len(allocs) == 0 {
					continue
				}
				al := allocs[arg%len(allocs)]
				require.True(t, faults(func() { al.b[0] = ^al.fill }), "a write to a sealed arena did not fault")
			case 5: // Unadvise the sealed arena's Region
				if region == nil {
					continue
				}
				err := region.Unadvise()
				if closed {
					require.ErrorIs(t, err, ErrClosed)
				} else if err != nil {
					require.ErrorIs(t, err, ErrClosed, "a second Unadvise")
				}
			case 6: // check every allocation's data
				if closed {
					continue
				}
				for _, al := range allocs {
					require.Equal(t, bytes.Repeat([]byte{al.fill}, len(al.b)), al.b)
				}
			case 7: // Close
				err := a.Close()
				if closed {
					require.ErrorIs(t, err, ErrClosed)
				} else {
					require.NoError(t, err)
					require.Nil(t, a.Bytes())
				}
				closed = true
			}
		}
		if !closed {
			for _, al := range allocs {
				require.Equal(t, bytes.Repeat([]byte{al.fill}, len(al.b)), al.b)
			}
			require.NoError(t, a.Close())
		}
	})
}

// FuzzParseSmaps feeds arbitrary text to the /proc/self/smaps parser, and a
// mapping line made of fuzzed fields: no panic, and a well-formed line
// parses back to its fields.
func FuzzParseSmaps(f *testing.F) {
	own, err := os.ReadFile(procSmaps)
	if err == nil {
		f.Add(string(own), uint64(0x1000), uint64(0x3000), "rw-p", "[heap]")
	}
	f.Add("7f00-7f10 rw-p 00000000 00:00 0\nSize: 4 kB\nKSM: 4 kB\nVmFlags: rd wr mg\n", uint64(0), uint64(0), "---p", "")
	f.Add("Size: 4 kB\n", uint64(1), uint64(2), "r--s", "/a b")
	f.Add("1-2 a b c d\nKSM: x kB\n", uint64(math.MaxUint64), uint64(0), "", " ")
	f.Add("1-2 a b c d e f\nRss: 18446744073709551616 kB\n\n", uint64(5), uint64(5), "rwxp", "[anon:x]")
	f.Fuzz(func(t *testing.T, text string, start, end uint64, perms, path string) {
		vmas, err := parseSmaps(strings.NewReader(text))
		if err == nil {
			for i := range vmas {
				v := &vmas[i]
				_ = v.size()
				_ = v.describe()
				_, _ = v.bytes("KSM")
				_ = v.fileBacked()
			}
			_ = overlapping(vmas, 0, math.MaxUint64)
		}

		if strings.ContainsAny(perms, " \n\t\r\v\f") || perms == "" ||
			strings.ContainsAny(path, "\n\r") || strings.TrimSpace(path) != path {
			return
		}
		line := fmt.Sprintf("%x-%x %s 00000000 00:00 0    %s\nVmFlags: rd mg \n", start, end, perms, path)
		vmas, err = parseSmaps(strings.NewReader(line))
		require.NoError(t, err, "%q", line)
		require.Len(t, vmas, 1)
		v := vmas[0]
		require.Equal(t, uintptr(start), v.start)
		require.Equal(t, uintptr(end), v.end)
		require.Equal(t, perms, v.perms)
		require.Equal(t, path, v.path)
		require.True(t, v.hasFlag("mg"))
	})
}

// FuzzParseNumbers feeds arbitrary text to the parsers of the kernel's
// numbers: /proc/self/ksm_stat, the MADV_UPM_MERGE advice file and the sysfs
// directories of counters. No panic; what parses is what strconv reads.
func FuzzParseNumbers(f *testing.F) {
	f.Add("ksm_rmap_items 10\nksm_zero_pages 0\nksm_merging_pages 4\nksm_process_profit -812\nksm_mergeable yes\nksm_merge_any no\n")
	f.Add("80\n")
	f.Add(" -3 ")
	f.Add("99999999999999999999")
	f.Add("name\tvalue\n\x00 1")
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		stat, err := parseKSMStat(strings.NewReader(text))
		if err == nil {
			for name := range stat {
				require.Contains(t, text, name)
			}
		}

		dir := t.TempDir()
		file := filepath.Join(dir, "advice")
		require.NoError(t, os.WriteFile(file, []byte(text), 0o644))
		advice, err := readAdvice(file)
		if want, werr := strconv.Atoi(strings.TrimSpace(text)); werr == nil && want > 0 {
			require.NoError(t, err)
			require.Equal(t, want, advice)
		} else {
			require.Error(t, err)
			require.Zero(t, advice)
		}

		d, err := readNumberDir(dir, "")
		require.NoError(t, err)
		if n, perr := strconv.ParseUint(strings.TrimSpace(text), 10, 64); perr == nil {
			require.Equal(t, n, d.values["advice"])
		} else {
			require.NotContains(t, d.values, "advice")
		}
		n, err := readSysInt(file)
		if want, werr := strconv.ParseInt(strings.TrimSpace(text), 10, 64); werr == nil {
			require.NoError(t, err)
			require.Equal(t, want, n)
		} else {
			require.Error(t, err)
		}

		// The backend override: any value is either a backend or an
		// error wrapping ErrUnsupported.
		p := probe{
			goos:      "linux",
			upmAdvice: func() (int, error) { return 80, nil },
			ksm:       func() error { return nil },
		}
		det := detect(text, p)
		if det.err != nil {
			require.ErrorIs(t, det.err, ErrUnsupported)
		}
		_ = diagnose(det, sysFiles{ksmDir: dir, kpageflags: file}, nil).String()
	})
}

// FuzzParseDomainStats feeds the parser of /sys/kernel/mm/upm/domains any
// text: it must not panic, and what it accepts must round-trip through the
// kernel's format.
func FuzzParseDomainStats(f *testing.F) {
	f.Add("# domain processes pages_shared pages_sharing candidates index_bytes\nname:fn 2 1 1 0 8256\ncgroup:77 1 0 0 3 8448\n")
	f.Add("name: 1 2 3 4 5\n")
	f.Add("cgroup:18446744073709551616 0 0 0 0 0")
	f.Add("#\n\n\nname:a/b 0 0 0 0 0")
	f.Fuzz(func(t *testing.T, text string) {
		domains, err := parseDomainStats(text)
		if err != nil {
			return
		}
		var b strings.Builder
		for _, d := range domains {
			if d.Name != "" {
				fmt.Fprintf(&b, "name:%s", d.Name)
			} else {
				fmt.Fprintf(&b, "cgroup:%d", d.CgroupID)
			}
			fmt.Fprintf(&b, " %d %d %d %d %d\n", d.Processes, d.PagesShared, d.PagesSharing, d.Candidates, d.IndexBytes)
		}
		again, err := parseDomainStats(b.String())
		require.NoError(t, err)
		require.Equal(t, domains, again)
	})
}
