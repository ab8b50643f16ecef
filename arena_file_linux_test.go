// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestAdviseFile(t *testing.T) {
	requireMerging(t)
	data := pattern(2, 3*pageSize+pageSize/2)
	path := filepath.Join(t.TempDir(), "weights.bin")
	require.NoError(t, os.WriteFile(path, data, 0o644))

	m, err := AdviseFile(path)
	require.NoError(t, err)
	assert.Equal(t, data, m.Bytes(), "file bytes changed")
	assert.Equal(t, len(data), m.Len())
	assert.Equal(t, len(data), cap(m.Bytes()), "Bytes lets callers append into the mapping")

	r := m.Region()
	require.NotNil(t, r)
	assert.Equal(t, 4*pageSize, r.Len(), "the region is the data rounded up to pages")
	assert.Equal(t, addrOf(m.Bytes()), r.Addr())
	assert.Equal(t, CurrentBackend(), r.Backend())
	v := vmaAt(t, r.Addr())
	assert.True(t, v.hasFlag("mg"), "not VM_MERGEABLE: %v", v.flags)
	assert.Equal(t, "r--p", v.perms, "not read-only")
	assert.True(t, v.hasFlag("nh"), "transparent huge pages allowed: %v", v.flags)
	assert.Contains(t, liveRegions(), r)

	require.NoError(t, m.Close())
	assert.Nil(t, m.Bytes())
	assert.NotContains(t, liveRegions(), r)
	assert.ErrorIs(t, m.Close(), ErrClosed)
	assert.ErrorIs(t, r.Unadvise(), ErrClosed)
}

func TestAdviseFileSmallerThanAPage(t *testing.T) {
	requireMerging(t)
	path := filepath.Join(t.TempDir(), "tiny")
	require.NoError(t, os.WriteFile(path, []byte("hello"), 0o644))
	m, err := AdviseFile(path)
	require.NoError(t, err)
	defer m.Close()
	assert.Equal(t, []byte("hello"), m.Bytes())
	assert.Equal(t, pageSize, m.Region().Len())
}

// TestAdviseFilePageCache: by default AdviseFile leaves the file's page
// cache alone, which other readers of the file (and the next cold start)
// use; DropPageCache drops it.
func TestAdviseFilePageCache(t *testing.T) {
	requireMerging(t)
	dir := diskTempDir(t)
	data := pattern(3, 16*pageSize)
	path := writeSyncedFile(t, dir, "table.bin", data)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, data, got)
	before := residentPages(t, path)
	if before == 0 {
		t.Skipf("the file system of %s keeps no page cache after a read", dir)
	}

	m, err := AdviseFile(path)
	require.NoError(t, err)
	defer m.Close()
	assert.Equal(t, data, m.Bytes())
	assert.Equal(t, before, residentPages(t, path), "AdviseFile dropped the page cache of %s by default", path)

	t.Run("DropPageCache", func(t *testing.T) {
		m, err := AdviseFile(path, DropPageCache())
		require.NoError(t, err)
		defer m.Close()
		assert.Zero(t, residentPages(t, path), "page cache of %s not dropped", path)
	})
	t.Run("fadvise fails", func(t *testing.T) {
		sysFadvise = func(int, int64, int64, int) error { return unix.ESPIPE }
		t.Cleanup(func() { sysFadvise = unix.Fadvise })
		m, err := AdviseFile(path, DropPageCache())
		require.NoError(t, err, "a good copy failed for its page cache")
		defer m.Close()
		assert.Equal(t, data, m.Bytes())
	})
}

// TestOpenRegularBlocks: O_NONBLOCK, there so that opening a FIFO does not
// hang, is cleared once fstat says the file is regular.
func TestOpenRegularBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(path, []byte("x"), 0o644))
	f, _, err := openRegular(path)
	require.NoError(t, err)
	defer f.Close()
	rc, err := f.SyscallConn()
	require.NoError(t, err)
	var flags int
	var ferr error
	require.NoError(t, rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }))
	require.NoError(t, ferr)
	assert.Zero(t, flags&unix.O_NONBLOCK, "O_NONBLOCK still set for the read")
}

func TestAdviseFileErrors(t *testing.T) {
	requireMerging(t)
	dir := t.TempDir()
	live := len(liveRegions())

	_, err := AdviseFile(filepath.Join(dir, "missing"))
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), "upm: advise file: open "+dir)

	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o644))
	_, err = AdviseFile(empty)
	assert.ErrorIs(t, err, ErrTooSmall)

	_, err = AdviseFile(dir)
	assert.ErrorContains(t, err, "not a regular file but a directory")
	_, err = AdviseFile("/dev/zero")
	assert.ErrorContains(t, err, "/dev/zero: not a regular file but a character device")

	big := filepath.Join(dir, "big")
	require.NoError(t, os.WriteFile(big, make([]byte, 2*pageSize), 0o644))
	_, err = AdviseFile(big, MaxFileSize(int64(pageSize)))
	assert.ErrorContains(t, err, fmt.Sprintf("%d bytes exceed the limit of %d", 2*pageSize, pageSize))
	m, err := AdviseFile(big, MaxFileSize(int64(2*pageSize)))
	require.NoError(t, err)
	require.NoError(t, m.Close())

	assert.Len(t, liveRegions(), live, "a failed AdviseFile left a Region behind")
}

func TestAdviseFilePermission(t *testing.T) {
	requireMerging(t)
	// Root reads any file: check as nobody.
	if !runPrivilegesDropped(t, "TestAdviseFilePermission") {
		return
	}
	path := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(path, []byte("weights"), 0o000))
	_, err := AdviseFile(path)
	assert.ErrorIs(t, err, fs.ErrPermission)
	_, err = MapFile(path)
	assert.ErrorIs(t, err, fs.ErrPermission)
}

func helperFileWrite() error {
	m, err := AdviseFile(os.Getenv("UPM_TEST_FILE"))
	if err != nil {
		return err
	}
	b := m.Bytes()
	fmt.Printf("advised %#x\n", addrOf(b))
	b[0]++
	return errors.New("write to an AdviseFile mapping did not fault")
}

func helperSealWrite() error {
	a, err := NewArena(2 * pageSize)
	if err != nil {
		return err
	}
	b, err := a.Alloc(pageSize + 10)
	if err != nil {
		return err
	}
	copy(b, "before Seal")
	if _, err := a.Seal(); err != nil {
		return err
	}
	if string(b[:11]) != "before Seal" {
		return fmt.Errorf("Seal changed the data to %q", b[:11])
	}
	target := &b[pageSize+3]
	fmt.Printf("sealed %#x\n", uintptr(unsafe.Pointer(target)))
	*target = 'x'
	return errors.New("write after Seal did not fault")
}

// requireSegfault runs the named helper, which prints "<word> <address>" and
// then writes to that address, and checks that the write killed it with
// SIGSEGV for lack of write permission at exactly that address.
func requireSegfault(t *testing.T, helper string, env ...string) {
	t.Helper()
	out, err := helperCommand(t, helper, env...).Output()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "helper did not fail: %s", out)
	stderr := string(exit.Stderr)
	addr := regexp.MustCompile(`^\w+ (0x[0-9a-f]+)\n$`).FindStringSubmatch(string(out))
	require.NotNil(t, addr, "stdout %q, stderr %s", out, stderr)
	// The Go runtime turns a fault outside its heap into a fatal error
	// that names the signal, the address, and SEGV_ACCERR (code 2): the
	// page is mapped but may not be written.
	assert.Equal(t, 2, exit.ExitCode(), stderr)
	assert.Contains(t, stderr, "unexpected fault address "+addr[1], stderr)
	assert.Contains(t, stderr, "[signal SIGSEGV: segmentation violation code=0x2 addr="+addr[1], stderr)
}

func TestSealedArenaWriteFaults(t *testing.T) {
	requireMerging(t)
	requireSegfault(t, "seal-write")
}

func TestAdviseFileWriteFaults(t *testing.T) {
	requireMerging(t)
	path := filepath.Join(t.TempDir(), "ro")
	require.NoError(t, os.WriteFile(path, pattern(4, pageSize), 0o644))
	requireSegfault(t, "file-write", "UPM_TEST_FILE="+path)
}

func TestMapFile(t *testing.T) {
	data := pattern(5, 2*pageSize+7)
	path := filepath.Join(t.TempDir(), "model.bin")
	require.NoError(t, os.WriteFile(path, data, 0o644))

	m, err := MapFile(path)
	require.NoError(t, err)
	assert.Equal(t, data, m.Bytes())
	assert.Nil(t, m.Region(), "MapFile advised the page cache")
	v := vmaAt(t, addrOf(m.Bytes()))
	assert.Equal(t, "r--p", v.perms)
	assert.Equal(t, path, v.path, "not mapped in place")
	d := DiagnoseRegion(m.Bytes())
	assert.False(t, d.Eligible)
	assert.Contains(t, d.String(), "maps a file privately")

	// The mapping outlives the file's name.
	require.NoError(t, os.Remove(path))
	assert.Equal(t, data, m.Bytes())

	require.NoError(t, m.Close())
	assert.Nil(t, m.Bytes())
	assert.ErrorIs(t, m.Close(), ErrClosed)
}

func TestMapFileEdgeCases(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o644))
	m, err := MapFile(empty)
	require.NoError(t, err)
	assert.NotNil(t, m.Bytes())
	assert.Empty(t, m.Bytes())
	require.NoError(t, m.Close())
	assert.ErrorIs(t, m.Close(), ErrClosed)
	assert.Nil(t, m.Bytes())

	_, err = MapFile(filepath.Join(dir, "missing"))
	assert.ErrorIs(t, err, fs.ErrNotExist)
	_, err = MapFile(dir)
	assert.ErrorContains(t, err, "not a regular file")

	var nilMapping *Mapping
	assert.Nil(t, nilMapping.Bytes())
	assert.Nil(t, nilMapping.Region())
	assert.ErrorIs(t, nilMapping.Close(), ErrClosed)
}

func TestNewArenaErrors(t *testing.T) {
	for _, size := range []int{0, -1} {
		_, err := NewArena(size)
		assert.ErrorContains(t, err, "size must be positive")
	}
	_, err := NewArena(1 << 62)
	assert.ErrorIs(t, err, unix.ENOMEM, "an arena larger than the address space")
	_, err = NewArena(int(^uint(0) >> 1))
	assert.ErrorContains(t, err, "too large")
}

func TestArenaAlloc(t *testing.T) {
	a, err := NewArena(100)
	require.NoError(t, err)
	defer a.Close()
	assert.Equal(t, pageSize, a.Cap())
	assert.Zero(t, addrOf(a.Bytes())%uintptr(pageSize))
	assert.Equal(t, pageSize, len(a.Bytes()))

	b1, err := a.Alloc(3)
	require.NoError(t, err)
	b2, err := a.Alloc(5)
	require.NoError(t, err)
	assert.Len(t, b2, 5)
	assert.Equal(t, addrOf(b1)+arenaAlign, addrOf(b2), "Alloc is not 16-byte aligned")
	assert.Equal(t, arenaAlign+5, a.Len())
	assert.Equal(t, []byte{0, 0, 0, 0, 0}, b2, "arena memory is not zeroed")

	b0, err := a.Alloc(0)
	require.NoError(t, err)
	assert.Empty(t, b0)

	u16, err := ArenaSlice[uint16](a, 3)
	require.NoError(t, err)
	u64, err := ArenaSlice[uint64](a, 4)
	require.NoError(t, err)
	base := addrOf(a.Bytes())
	assert.Equal(t, base+arenaAlign+6, uintptr(unsafe.Pointer(&u16[0])), "uint16s aligned to 2")
	assert.Equal(t, base+arenaAlign+16, uintptr(unsafe.Pointer(&u64[0])), "uint64s aligned to 8")
	u64[3] = 42
	type point struct{ X, Y float32 }
	pts, err := ArenaSlice[[2]point](a, 2)
	require.NoError(t, err)
	assert.Len(t, pts, 2)
	none, err := ArenaSlice[struct{}](a, 1000)
	require.NoError(t, err)
	assert.Len(t, none, 1000)

	_, err = a.Alloc(-1)
	assert.ErrorContains(t, err, "negative size")
	_, err = a.Alloc(pageSize)
	assert.ErrorIs(t, err, ErrArenaFull)
	_, err = ArenaSlice[uint64](a, int(^uint(0)>>1)/4)
	assert.ErrorIs(t, err, ErrArenaFull)
	rest := a.Cap() - a.Len()
	_, err = a.Alloc(rest)
	require.NoError(t, err, "the last %d bytes", rest)
	_, err = a.Alloc(1)
	assert.ErrorIs(t, err, ErrArenaFull)
	assert.Equal(t, int64(42), int64(u64[3]))
}

func TestArenaSliceRefusesPointers(t *testing.T) {
	a, err := NewArena(pageSize)
	require.NoError(t, err)
	defer a.Close()
	check := func(err error, typ, culprit string) {
		t.Helper()
		assert.ErrorContains(t, err, typ+" holds Go pointers ("+culprit+")")
	}
	_, err = ArenaSlice[*int](a, 1)
	check(err, "*int", "*int")
	_, err = ArenaSlice[string](a, 1)
	check(err, "string", "string")
	_, err = ArenaSlice[struct {
		N int
		B []byte
	}](a, 1)
	check(err, "struct { N int; B []uint8 }", "[]uint8")
	_, err = ArenaSlice[[4]any](a, 1)
	check(err, "[4]interface {}", "interface {}")
	_, err = ArenaSlice[map[int]int](a, 1)
	check(err, "map[int]int", "map[int]int")
	_, err = ArenaSlice[[0]*int](a, 1)
	assert.NoError(t, err, "an empty array holds no pointer")
	assert.Zero(t, a.Len(), "refused slices took room")
}

func TestArenaSeal(t *testing.T) {
	requireMerging(t)
	a, err := NewArena(3 * pageSize)
	require.NoError(t, err)
	table, err := ArenaSlice[uint32](a, 1000)
	require.NoError(t, err)
	for i := range table {
		table[i] = uint32(i * i)
	}

	r, err := a.Seal()
	require.NoError(t, err)
	assert.Equal(t, addrOf(a.Bytes()), r.Addr())
	assert.Equal(t, 3*pageSize, r.Len())
	v := vmaAt(t, r.Addr())
	assert.True(t, v.hasFlag("mg"), "not VM_MERGEABLE: %v", v.flags)
	assert.Equal(t, "r--p", v.perms)
	assert.Equal(t, uint32(999*999), table[999], "Seal changed the data")

	_, err = a.Seal()
	assert.ErrorIs(t, err, ErrSealed)
	_, err = a.Alloc(1)
	assert.ErrorIs(t, err, ErrSealed)
	_, err = ArenaSlice[byte](a, 1)
	assert.ErrorIs(t, err, ErrSealed)

	require.NoError(t, a.Close())
	assert.NotContains(t, liveRegions(), r)
	assert.Nil(t, a.Bytes())
	assert.ErrorIs(t, a.Close(), ErrClosed)
	_, err = a.Alloc(1)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = a.Seal()
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, r.Unadvise(), ErrClosed)
}

func TestArenaSealUnsupported(t *testing.T) {
	a, err := NewArena(pageSize)
	require.NoError(t, err)
	defer a.Close()
	b, err := a.Alloc(8)
	require.NoError(t, err)
	withDetection(t, detection{err: fmt.Errorf("merging disabled by UPM_BACKEND=none: %w", ErrUnsupported)})

	_, err = a.Seal()
	require.ErrorIs(t, err, ErrUnsupported)
	assert.Contains(t, err.Error(), "upm: seal 4096 bytes at ")
	// A failed Seal leaves the arena as it was: writable, open to Alloc.
	b[0] = 1
	assert.Equal(t, "rw-p", vmaAt(t, addrOf(b)).perms)
	_, err = a.Alloc(8)
	assert.NoError(t, err)
}

func TestNilArena(t *testing.T) {
	var a *Arena
	_, err := a.Alloc(1)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = ArenaSlice[int](a, 1)
	assert.ErrorIs(t, err, ErrClosed)
	_, err = a.Seal()
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, a.Close(), ErrClosed)
	assert.Nil(t, a.Bytes())
	assert.Zero(t, a.Cap()+a.Len())
	assert.True(t, strings.HasPrefix(a.Close().Error(), "upm: "))
}
