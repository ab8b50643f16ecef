// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestOnlyConclusiveProbesAreKept: a probe that failed for EACCES is asked
// again at the next call; a conclusive answer is kept.
func TestOnlyConclusiveProbesAreKept(t *testing.T) {
	t.Setenv(EnvBackend, "auto")
	f := fakeProbe{goos: "linux", upmErr: fmt.Errorf("open /sys/kernel/mm/upm/advice: %w", fs.ErrPermission), ksmErr: absent("no KSM")}
	withProbe(t, f.probe)

	assert.Equal(t, BackendNone, CurrentBackend())
	err := BackendReason()
	require.Error(t, err)
	assert.ErrorIs(t, err, fs.ErrPermission)
	assert.NotErrorIs(t, err, ErrUnsupported, "an inconclusive probe reported as a conclusive no")

	// The permission comes back: the next call finds UPM, and keeps it.
	f.upmErr, f.advice = nil, 80
	assert.Equal(t, BackendUPM, CurrentBackend())
	calls := f.upmCalls
	assert.Equal(t, BackendUPM, CurrentBackend())
	assert.Equal(t, calls, f.upmCalls, "a conclusive answer probed again")

	// An inconclusive UPM probe with KSM present uses KSM, and asks again.
	g := fakeProbe{goos: "linux", upmErr: fmt.Errorf("read: %w", unix.ENOMEM)}
	withProbe(t, g.probe)
	assert.Equal(t, BackendKSM, CurrentBackend())
	assert.Equal(t, BackendKSM, CurrentBackend())
	assert.Equal(t, 2, g.upmCalls)
}

// TestProbeDoesNotRegisterWithKSMD: MADV_MERGEABLE, even on a page unmapped
// at once, sets MMF_VM_MERGEABLE on the mm and gives ksmd an mm_slot for the
// rest of the process's life (/proc/self/ksm_stat's ksm_mergeable, which
// looks at VMAs, does not show it). Probing and diagnosing must not.
func TestProbeDoesNotRegisterWithKSMD(t *testing.T) {
	if _, err := os.Stat(sysKSMDir); err != nil {
		t.Skipf("needs KSM: %v", err)
	}
	var advices []int
	withMadviseHook(t, func(_ []byte, advice int) error {
		advices = append(advices, advice)
		return nil
	})
	t.Setenv(EnvBackend, "auto")
	withProbe(t, systemProbe)
	CurrentBackend()
	Diagnose()
	require.NoError(t, probeKSM(sysKSMDir))
	assert.NotContains(t, advices, unix.MADV_MERGEABLE, "a probe advised MADV_MERGEABLE")
	assert.Contains(t, advices, unix.MADV_UNMERGEABLE)
}

func TestMarkMergeDomainWithoutUPM(t *testing.T) {
	saved := upmAdvicePath
	upmAdvicePath = filepath.Join(t.TempDir(), "no-upm-advice")
	t.Cleanup(func() { upmAdvicePath = saved })
	var st unix.Statfs_t
	if err := unix.Statfs(sysCgroupRoot, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Skipf("needs cgroup v2 at %s", sysCgroupRoot)
	}
	// The root cgroup: were the mark set, the whole machine would be one
	// domain; without UPM nothing may be set at all.
	err := MarkMergeDomain(sysCgroupRoot, "everyone")
	_, xerr := unix.Getxattr(sysCgroupRoot, MergeDomainXattr, nil)
	assert.Error(t, xerr, "the mark was set")
	require.ErrorIs(t, err, ErrUnsupported)
	assert.Contains(t, err.Error(), "nothing would honour")
}
