// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// withMadviseHook makes h run before every madvise of the package until the
// test ends. Tests that use it must not run in parallel.
func withMadviseHook(t *testing.T, h func(mem []byte, advice int) error) {
	t.Helper()
	testHookMadvise = h
	t.Cleanup(func() { testHookMadvise = nil })
}

// TestFailedAdviseLeavesOtherRegions: a failed Advise over memory that an
// earlier Region holds must leave that Region's advice alone.
func TestFailedAdviseLeavesOtherRegions(t *testing.T) {
	requireMerging(t)
	mem := mmapPages(t, 4)
	copy(mem, pattern(3, len(mem)))
	base := addrOf(mem)
	first, err := Advise(mem[:2*pageSize])
	require.NoError(t, err)
	defer first.Unadvise()

	// A hole at page 2: the kernel advises pages 0, 1 and 3 and fails.
	require.NoError(t, unix.MunmapPtr(unsafe.Pointer(&mem[2*pageSize]), uintptr(pageSize)))
	r, err := Advise(mem)
	require.ErrorIs(t, err, unix.ENOMEM)
	var aerr *AdviseError
	require.ErrorAs(t, err, &aerr)
	assert.Equal(t, "advise", aerr.Op)
	assert.Equal(t, base, aerr.Addr)
	assert.Equal(t, 4*pageSize, aerr.Len)

	assert.True(t, mergeable(t, base), "the earlier Region lost its advice")
	assert.True(t, mergeable(t, base+uintptr(pageSize)), "the earlier Region lost its advice")
	assert.True(t, mergeable(t, base+uintptr(3*pageSize)), "the kernel's advice after the hole was taken back")
	require.NotNil(t, r, "no Region owns what the failed Advise left advised")
	assert.Contains(t, liveRegions(), r)
	assert.Equal(t, StatePartial, r.Status().State)
}

// TestAdviseKeepsWhatTheKernelMerged: on ENOSPC (and EAGAIN, EINTR) the
// kernel keeps what it merged; Advise must not unmerge it, and must not
// repeat the call.
func TestAdviseKeepsWhatTheKernelMerged(t *testing.T) {
	requireMerging(t)
	withDetection(t, detection{backend: BackendUPM, advice: unix.MADV_MERGEABLE})
	for _, errno := range []unix.Errno{unix.ENOSPC, unix.EAGAIN, unix.EINTR} {
		t.Run(unix.ErrnoName(errno), func(t *testing.T) {
			mem := mmapPages(t, 4)
			var calls []int
			withMadviseHook(t, func(mem []byte, advice int) error {
				calls = append(calls, advice)
				if advice == unix.MADV_UNMERGEABLE {
					return nil
				}
				// What the kernel does: advise the range, merge part of
				// it, and fail.
				require.NoError(t, unix.Madvise(mem, unix.MADV_MERGEABLE))
				return errno
			})
			r, err := Advise(mem)
			require.ErrorIs(t, err, errno)
			assert.Equal(t, []int{unix.MADV_MERGEABLE}, calls, "retried, or took the advice back")
			assert.True(t, mergeable(t, addrOf(mem)))
			require.NotNil(t, r)
			assert.Equal(t, StatePartial, r.Status().State)
			assert.Contains(t, r.Status().Reason, errno.Error())
			if errno == unix.ENOSPC {
				assert.ErrorIs(t, err, ErrLimit)
				assert.Contains(t, err.Error(), "MADV_UPM_MERGE: the process reached max_pages_per_process")
			}
			testHookMadvise = nil
			require.NoError(t, r.Unadvise())
		})
	}
}

// TestAdviseWithNothingAdvisedReturnsNoRegion: when the kernel refused the
// whole range, no Region is left behind.
func TestAdviseWithNothingAdvisedReturnsNoRegion(t *testing.T) {
	requireMerging(t)
	mem := mmapPages(t, 2)
	calls := 0
	withMadviseHook(t, func([]byte, int) error { calls++; return unix.EAGAIN })
	r, err := Advise(mem)
	assert.ErrorIs(t, err, unix.EAGAIN)
	assert.Nil(t, r)
	assert.Equal(t, 1, calls, "EAGAIN retried")
}

// blockingHook returns a hook that blocks the madvise of advice until
// release is closed, and a channel closed when the call is blocked.
func blockingHook(advice int) (hook func([]byte, int) error, entered <-chan struct{}, release chan struct{}) {
	in := make(chan struct{})
	release = make(chan struct{})
	var once sync.Once
	return func(_ []byte, a int) error {
		if a == advice {
			once.Do(func() { close(in) })
			<-release
		}
		return nil
	}, in, release
}

// within fails the test if f does not return within a second.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Errorf("%s blocked behind a slow madvise", what)
	}
}

func TestSlowSealDoesNotBlock(t *testing.T) {
	requireMerging(t)
	withDetection(t, detection{backend: BackendKSM})
	a, err := NewArena(4 * pageSize)
	require.NoError(t, err)
	defer a.Close()
	_, err = a.Alloc(100)
	require.NoError(t, err)

	hook, entered, release := blockingHook(unix.MADV_MERGEABLE)
	withMadviseHook(t, hook)
	sealed := make(chan error)
	go func() { _, err := a.Seal(); sealed <- err }()
	<-entered
	within(t, "Arena.Len", func() { assert.Equal(t, 100, a.Len()) })
	within(t, "Arena.Bytes", func() { assert.Len(t, a.Bytes(), 4*pageSize) })
	within(t, "Arena.Cap", func() { a.Cap() })
	within(t, "Arena.Alloc", func() {
		_, err := a.Alloc(1)
		assert.ErrorIs(t, err, ErrSealed)
	})
	close(release)
	require.NoError(t, <-sealed)
}

func TestSlowUnadviseDoesNotBlock(t *testing.T) {
	requireMerging(t)
	mem := mmapPages(t, 4)
	r, err := Advise(mem)
	require.NoError(t, err)

	hook, entered, release := blockingHook(unix.MADV_UNMERGEABLE)
	withMadviseHook(t, hook)
	done := make(chan error)
	go func() { done <- r.Unadvise() }()
	<-entered
	within(t, "Region.Len", func() { assert.Equal(t, 4*pageSize, r.Len()) })
	within(t, "Region.Merged", func() { _, _, err := r.Merged(); assert.NoError(t, err) })
	within(t, "Region.Diagnose", func() { r.Diagnose() })
	within(t, "Diagnose", func() { Diagnose() })
	within(t, "a second Unadvise", func() { assert.ErrorIs(t, r.Unadvise(), ErrClosed) })
	close(release)
	require.NoError(t, <-done)
	assert.ErrorIs(t, r.Unadvise(), ErrClosed)
}

func TestAdviseErrorType(t *testing.T) {
	err := error(&AdviseError{Op: "advise", Addr: 0x1000, Len: 8192, Advice: "MADV_UPM_MERGE", Err: errors.Join(ErrLimit, unix.ENOSPC)})
	assert.ErrorIs(t, err, ErrLimit)
	assert.ErrorIs(t, err, unix.ENOSPC)
	_, err = Advise(nil)
	var aerr *AdviseError
	require.ErrorAs(t, err, &aerr)
	assert.ErrorIs(t, err, ErrTooSmall)
	assert.Empty(t, aerr.Advice)
}

func TestAdviseSliceRefusesPointers(t *testing.T) {
	for name, f := range map[string]func() error{
		"[]*int":               func() error { _, err := AdviseSlice(make([]*int, 4096)); return err },
		"[]string":             func() error { _, err := AdviseSlice(make([]string, 4096)); return err },
		"[]struct{ s []byte }": func() error { _, err := AdviseSlice(make([]struct{ s []byte }, 4096)); return err },
	} {
		err := f()
		require.Error(t, err, name)
		assert.Contains(t, err.Error(), "holds Go pointers", name)
	}
}

func TestArenaSliceZeroSizeAgreesWithState(t *testing.T) {
	a, err := NewArena(pageSize)
	require.NoError(t, err)
	_, err = ArenaSlice[struct{}](a, 3)
	require.NoError(t, err)
	if BackendReason() == nil {
		_, err = a.Seal()
		require.NoError(t, err)
		_, err = ArenaSlice[struct{}](a, 3)
		assert.ErrorIs(t, err, ErrSealed)
	}
	require.NoError(t, a.Close())
	_, err = ArenaSlice[struct{}](a, 3)
	assert.ErrorIs(t, err, ErrClosed)
}
