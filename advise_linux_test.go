// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestAdviseOnlyInteriorPages(t *testing.T) {
	requireMerging(t)
	mem := mmapPages(t, 4)
	copy(mem, pattern(1, len(mem)))
	base := addrOf(mem)
	ps := uintptr(pageSize)

	// From the middle of page 0 to the middle of page 3: pages 1 and 2.
	r, err := Advise(mem[pageSize/2 : 3*pageSize+pageSize/2])
	require.NoError(t, err)
	assert.Equal(t, base+ps, r.Addr())
	assert.Equal(t, 2*pageSize, r.Len())
	assert.Equal(t, CurrentBackend(), r.Backend())

	for page, want := range []bool{false, true, true, false} {
		assert.Equal(t, want, mergeable(t, base+uintptr(page)*ps), "VM_MERGEABLE of page %d", page)
	}
	assert.Equal(t, pattern(1, len(mem)), mem, "advising changed the data")

	require.NoError(t, r.Unadvise())
	for page := range 4 {
		assert.False(t, mergeable(t, base+uintptr(page)*ps), "page %d still VM_MERGEABLE after Unadvise", page)
	}
	assert.ErrorIs(t, r.Unadvise(), ErrClosed)
	_, _, err = r.Merged()
	assert.ErrorIs(t, err, ErrClosed)
}

func TestAdviseAlignedRange(t *testing.T) {
	requireMerging(t)
	mem := mmapPages(t, 3)
	r, err := Advise(mem)
	require.NoError(t, err)
	defer r.Unadvise()
	assert.Equal(t, addrOf(mem), r.Addr())
	assert.Equal(t, len(mem), r.Len())
	for page := range 3 {
		assert.True(t, mergeable(t, addrOf(mem)+uintptr(page*pageSize)), "page %d", page)
	}
}

func TestAdviseSlice(t *testing.T) {
	requireMerging(t)
	// 64 KiB: a large object, which the Go runtime aligns to its pages.
	s := make([]uint64, 16*pageSize/8)
	for i := range s {
		s[i] = uint64(i)
	}
	r, err := AdviseSlice(s)
	require.NoError(t, err)
	defer r.Unadvise()

	start := uintptr(unsafe.Pointer(&s[0]))
	end := start + uintptr(len(s)*8)
	assert.GreaterOrEqual(t, r.Addr(), start)
	assert.LessOrEqual(t, r.Addr()+uintptr(r.Len()), end)
	assert.Zero(t, r.Addr()%uintptr(pageSize))
	assert.GreaterOrEqual(t, r.Len(), 15*pageSize)
	assert.True(t, mergeable(t, r.Addr()))
	assert.True(t, mergeable(t, r.Addr()+uintptr(r.Len()-1)))

	_, err = AdviseSlice([]struct{}{{}, {}})
	assert.ErrorIs(t, err, ErrTooSmall)
	_, err = AdviseSlice[float32](nil)
	assert.ErrorIs(t, err, ErrTooSmall)
}

func TestAdviseTooSmall(t *testing.T) {
	mem := mmapPages(t, 2)
	for name, b := range map[string][]byte{
		"nil":                  nil,
		"empty":                mem[:0],
		"100 bytes":            mem[:100],
		"a page, unaligned":    mem[1 : 1+pageSize],
		"straddles a boundary": mem[pageSize/2 : pageSize+pageSize/2],
		"a page less a byte":   mem[:pageSize-1],
	} {
		t.Run(name, func(t *testing.T) {
			r, err := Advise(b)
			require.ErrorIs(t, err, ErrTooSmall)
			assert.Nil(t, r)
			assert.True(t, strings.HasPrefix(err.Error(), "upm: advise "), err.Error())
			assert.False(t, mergeable(t, addrOf(mem)), "page 0 advised")
		})
	}
}

func TestAdviseUnmapped(t *testing.T) {
	requireMerging(t)
	// A page that was mapped and is no longer.
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(pageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	require.NoError(t, unix.MunmapPtr(p, uintptr(pageSize)))
	freed := unsafe.Slice((*byte)(p), pageSize)

	r, err := Advise(freed)
	require.ErrorIs(t, err, unix.ENOMEM)
	assert.Nil(t, r)
	assert.Contains(t, err.Error(), fmt.Sprintf("upm: advise %d bytes at %#x: MADV_", pageSize, uintptr(p)))

	// A hole in the middle of a range: the kernel advises the pages
	// around it before it fails, and the Region returned owns them.
	mem := mmapPages(t, 3)
	require.NoError(t, unix.MunmapPtr(unsafe.Pointer(&mem[pageSize]), uintptr(pageSize)))
	r, err = Advise(mem)
	assert.ErrorIs(t, err, unix.ENOMEM)
	require.NotNil(t, r)
	assert.Equal(t, StatePartial, r.Status().State)
	assert.True(t, mergeable(t, addrOf(mem)), "page before the hole")
	assert.True(t, mergeable(t, addrOf(mem)+uintptr(2*pageSize)), "page after the hole")
	assert.ErrorIs(t, r.Unadvise(), unix.ENOMEM)
	assert.False(t, mergeable(t, addrOf(mem)), "page before the hole left advised")
	assert.False(t, mergeable(t, addrOf(mem)+uintptr(2*pageSize)), "page after the hole left advised")
	assert.NotContains(t, liveRegions(), r)
}

func TestRegionOfFreedMemory(t *testing.T) {
	requireMerging(t)
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(2*pageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	mem := unsafe.Slice((*byte)(p), 2*pageSize)
	mem[0] = 1
	r, err := Advise(mem)
	require.NoError(t, err)
	require.NoError(t, unix.MunmapPtr(p, uintptr(2*pageSize)))

	merged, _, err := r.Merged()
	require.NoError(t, err)
	assert.Zero(t, merged)
	assert.False(t, r.Diagnose().Eligible)

	err = r.Unadvise()
	require.ErrorIs(t, err, unix.ENOMEM)
	assert.NotContains(t, liveRegions(), r, "a Region of unmapped memory stays registered")
	assert.ErrorIs(t, r.Unadvise(), ErrClosed)
}

func TestNilRegion(t *testing.T) {
	var r *Region
	assert.ErrorIs(t, r.Unadvise(), ErrClosed)
	_, _, err := r.Merged()
	assert.ErrorIs(t, err, ErrClosed)
	assert.Zero(t, r.Len())
	assert.Zero(t, r.Addr())
	assert.Equal(t, BackendNone, r.Backend())
	assert.False(t, r.Diagnose().Eligible)
}

func TestRegionKeepsMemoryRegistered(t *testing.T) {
	requireMerging(t)
	r, err := Advise(make([]byte, 8*pageSize))
	require.NoError(t, err)
	assert.Contains(t, liveRegions(), r)
	require.NoError(t, r.Unadvise())
	assert.NotContains(t, liveRegions(), r)
}

func TestMergedCountsNothingUnmerged(t *testing.T) {
	requireMerging(t)
	// Unique data: nothing can be merged with it, by any backend.
	mem := mmapPages(t, 4)
	copy(mem, pattern(uint64(os.Getpid())<<20|0xfeed, len(mem)))
	r, err := Advise(mem)
	require.NoError(t, err)
	defer r.Unadvise()
	merged, exact, err := r.Merged()
	require.NoError(t, err)
	assert.Zero(t, merged)
	if pfnsReadable(procKPageFlag) {
		// Page frame numbers (CAP_SYS_ADMIN) and a right KPF_KSM.
		assert.True(t, exact)
	}
}

func TestAdviseSharedMapping(t *testing.T) {
	requireMerging(t)
	mem, err := unix.Mmap(-1, 0, 2*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	mem[0] = 1

	d := DiagnoseRegion(mem)
	assert.False(t, d.Eligible)
	assert.Contains(t, d.String(), "shared mapping")
	assert.True(t, d.Has(CodeSharedMapping))

	r, err := Advise(mem)
	switch CurrentBackend() {
	case BackendUPM:
		assert.ErrorIs(t, err, unix.EINVAL, "UPM refuses shared memory")
		assert.Contains(t, err.Error(), "MADV_UPM_MERGE: invalid argument")
	case BackendKSM:
		// KSM accepts the advice and ignores it, which is why
		// DiagnoseRegion exists.
		require.NoError(t, err)
		defer r.Unadvise()
		assert.False(t, mergeable(t, addrOf(mem)))
	}
}

func TestAdviseUnsupported(t *testing.T) {
	mem := mmapPages(t, 2)
	reason := fmt.Errorf("kernel has neither UPM (x) nor KSM (y): %w", ErrUnsupported)
	withDetection(t, detection{err: reason})

	r, err := Advise(mem)
	require.ErrorIs(t, err, ErrUnsupported)
	assert.ErrorIs(t, err, errors.ErrUnsupported)
	assert.Nil(t, r)
	assert.Equal(t, fmt.Sprintf("upm: advise %d bytes at %#x: kernel has neither UPM (x) nor KSM (y): not supported", len(mem), addrOf(mem)), err.Error())
	assert.False(t, mergeable(t, addrOf(mem)))

	_, err = AdviseFile(os.Args[0])
	assert.ErrorIs(t, err, ErrUnsupported)
}

// backendReport is what the backend-report helper prints.
type backendReport struct {
	Backend     string
	Reason      string
	AdviseErr   string
	Unsupported bool
	Diagnosis   string
}

func helperBackendReport() error {
	mem, err := unix.Mmap(-1, 0, 2*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	rep := backendReport{Backend: CurrentBackend().String(), Diagnosis: Diagnose().String()}
	if err := BackendReason(); err != nil {
		rep.Reason = err.Error()
	}
	if _, err := Advise(mem); err != nil {
		rep.AdviseErr = err.Error()
		rep.Unsupported = errors.Is(err, ErrUnsupported) && errors.Is(err, errors.ErrUnsupported)
	}
	return json.NewEncoder(os.Stdout).Encode(rep)
}

func TestEnvBackend(t *testing.T) {
	report := func(t *testing.T, value string) backendReport {
		cmd := helperCommand(t, "backend-report", EnvBackend+"="+value)
		out, err := cmd.Output()
		require.NoError(t, err, "helper: %s", stderrOf(err))
		var rep backendReport
		require.NoError(t, json.Unmarshal(out, &rep), string(out))
		return rep
	}

	t.Run("none", func(t *testing.T) {
		rep := report(t, "none")
		assert.Equal(t, "none", rep.Backend)
		assert.True(t, rep.Unsupported, rep.AdviseErr)
		assert.Contains(t, rep.AdviseErr, "merging disabled by UPM_BACKEND=none")
		assert.Contains(t, rep.Diagnosis, "UPM_BACKEND=none overrides")
	})
	t.Run("upm", func(t *testing.T) {
		rep := report(t, "upm")
		assert.Equal(t, "upm", rep.Backend)
		if _, err := os.Stat(sysUPMAdvice); err == nil {
			assert.Empty(t, rep.AdviseErr)
			assert.Empty(t, rep.Reason)
			return
		}
		// Forced, but not there: a clear error, not KSM in disguise.
		assert.True(t, rep.Unsupported, rep.AdviseErr)
		assert.Contains(t, rep.AdviseErr, "UPM_BACKEND=upm, but the kernel does not offer MADV_UPM_MERGE")
		assert.Equal(t, rep.Reason, rep.AdviseErr[strings.Index(rep.AdviseErr, "UPM_BACKEND"):])
	})
	t.Run("ksm", func(t *testing.T) {
		rep := report(t, "KSM")
		assert.Equal(t, "ksm", rep.Backend)
		if probeKSM(sysKSMDir) == nil {
			assert.Empty(t, rep.AdviseErr)
		} else {
			assert.True(t, rep.Unsupported, rep.AdviseErr)
		}
	})
	t.Run("bogus", func(t *testing.T) {
		rep := report(t, "turbo")
		assert.Equal(t, "none", rep.Backend)
		assert.True(t, rep.Unsupported)
		assert.Contains(t, rep.Reason, `UPM_BACKEND="turbo" is not one of upm, ksm, none or auto`)
	})
}

// stderrOf returns the standard error of a failed command, if err has it.
func stderrOf(err error) string {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(exit.Stderr)
	}
	return ""
}

func TestCountPageFlags(t *testing.T) {
	if !hasCapability(capSysAdmin) {
		t.Skip("page frame numbers need CAP_SYS_ADMIN")
	}
	mem := mmapPages(t, 8)
	for _, page := range []int{0, 1, 2, 5, 7} {
		mem[page*pageSize+page] = byte(page + 1)
	}
	anon, ok := countPageFlags(mem, kpfAnon)
	require.True(t, ok, "page flags unreadable as root")
	assert.Equal(t, 5, anon, "anonymous pages of 5 written")
	merged, ok := pageFlagsMerged(mem)
	require.True(t, ok)
	assert.Zero(t, merged, "unique pages counted as merged")
	anon, ok = countPageFlags(mem[:3*pageSize], kpfAnon)
	require.True(t, ok)
	assert.Equal(t, 3, anon)

	// Pages that were never written are not present and count nothing.
	none, ok := countPageFlags(mmapPages(t, 4), kpfAnon|kpfKSM)
	require.True(t, ok)
	assert.Zero(t, none)
}
