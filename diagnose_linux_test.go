// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// fakeKSM makes a directory with the given KSM files.
func fakeKSM(t *testing.T, files map[string]string) sysFiles {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content+"\n"), 0o644))
	}
	return sysFiles{ksmDir: dir, kpageflags: filepath.Join(dir, "no-kpageflags")}
}

func TestDiagnoseKSM(t *testing.T) {
	ksm := detection{backend: BackendKSM}
	regions := []*Region{{size: 64 << 20}}

	t.Run("stopped", func(t *testing.T) {
		files := fakeKSM(t, map[string]string{"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20"})
		d := diagnose(ksm, files, regions)
		assert.False(t, d.Merges)
		assert.Equal(t, 0, d.KSMRun)
		s := d.String()
		assert.True(t, strings.HasPrefix(s, "upm: backend ksm: advised memory is NOT merged\n"), s)
		assert.Contains(t, s, "ksmd is stopped")
		assert.Contains(t, s, "echo 1 > "+files.ksmDir+"/run")
		assert.Contains(t, s, "1 advised region, 64 MiB in all")
	})
	t.Run("running", func(t *testing.T) {
		files := fakeKSM(t, map[string]string{"run": "1", "pages_to_scan": "100", "sleep_millisecs": "20", "advisor_mode": "none [scan-time]"})
		d := diagnose(ksm, files, regions)
		assert.True(t, d.Merges)
		assert.Equal(t, 1, d.KSMRun)
		s := d.String()
		assert.True(t, strings.HasPrefix(s, "upm: backend ksm: advised memory is merged\n"), s)
		// 5000 pages a second; 64 MiB is 16384 pages, seen twice.
		assert.Contains(t, s, "scans 100 pages every 20 ms, about 19.5 MiB a second")
		assert.Contains(t, s, "the 64 MiB advised here take 6.554s or more")
		assert.Contains(t, s, "The KSM advisor")
	})
	t.Run("no pages to scan", func(t *testing.T) {
		d := diagnose(ksm, fakeKSM(t, map[string]string{"run": "1", "pages_to_scan": "0", "sleep_millisecs": "20"}), nil)
		assert.False(t, d.Merges)
		assert.Contains(t, d.String(), "scans no page")
	})
	t.Run("unmerging", func(t *testing.T) {
		d := diagnose(ksm, fakeKSM(t, map[string]string{"run": "2"}), nil)
		assert.False(t, d.Merges)
		assert.Equal(t, 2, d.KSMRun)
		assert.Contains(t, d.String(), "KSM is unmerging")
	})
	t.Run("unreadable", func(t *testing.T) {
		d := diagnose(ksm, fakeKSM(t, nil), nil)
		assert.False(t, d.Merges)
		assert.Equal(t, -1, d.KSMRun)
		assert.Contains(t, d.String(), "whether ksmd runs is unknown")
	})
	t.Run("page flags", func(t *testing.T) {
		files := fakeKSM(t, map[string]string{"run": "0", "kpageflags": "x"})
		files.pfns = func() bool { return false }
		d := diagnose(ksm, files, nil)
		assert.Contains(t, d.String(), "Region.Merged is not exact: page frame numbers and flags need CAP_SYS_ADMIN")
		assert.True(t, d.Has(CodeCountsApproximate))
		files.pfns = func() bool { return true }
		d = diagnose(ksm, files, nil)
		assert.Contains(t, d.String(), "Region.Merged is exact")
		assert.True(t, d.Has(CodeCountsExact))
	})
}

func TestDiagnoseUPM(t *testing.T) {
	upm := detection{backend: BackendUPM, advice: 80}
	d := diagnose(upm, fakeKSM(t, map[string]string{"run": "0"}), nil)
	assert.True(t, d.Merges)
	assert.Equal(t, 80, d.Advice)
	s := d.String()
	assert.True(t, strings.HasPrefix(s, "upm: backend upm: advised memory is merged\n"), s)
	assert.Contains(t, s, "MADV_UPM_MERGE is madvise advice 80")
	assert.Contains(t, s, "UPM does not need it")

	d = diagnose(upm, fakeKSM(t, map[string]string{"run": "2"}), nil)
	assert.False(t, d.Merges)
	assert.Contains(t, d.String(), "set to unmerge")
}

func TestDiagnoseNone(t *testing.T) {
	none := detection{forced: "none", err: fmt.Errorf("merging disabled by UPM_BACKEND=none: %w", ErrUnsupported)}
	d := diagnose(none, fakeKSM(t, map[string]string{"run": "1"}), nil)
	assert.False(t, d.Merges)
	assert.Equal(t, "none", d.Forced)
	s := d.String()
	assert.Contains(t, s, "UPM_BACKEND=none overrides the detection")
	assert.Contains(t, s, "Nothing is merged: merging disabled by UPM_BACKEND=none: not supported.")
	assert.NotContains(t, s, "Region.Merged")
}

func TestDiagnoseThisSystem(t *testing.T) {
	d := Diagnose()
	assert.Equal(t, CurrentBackend(), d.Backend)
	assert.NotEmpty(t, d.Findings)
	if run, err := readSysInt(filepath.Join(sysKSMDir, "run")); err == nil {
		assert.Equal(t, int(run), d.KSMRun)
	}
	if CurrentBackend() == BackendKSM && BackendReason() == nil {
		assert.Equal(t, d.KSMRun == 1, d.Merges, d.String())
	}
	t.Log("\n" + d.String())
}

func TestDiagnoseRegion(t *testing.T) {
	mem := mmapPages(t, 4)
	copy(mem[:2*pageSize], pattern(7, 2*pageSize))

	d := DiagnoseRegion(mem)
	assert.Equal(t, addrOf(mem), d.Addr)
	assert.Equal(t, len(mem), d.Len)
	assert.True(t, d.Eligible, d.String())
	assert.False(t, d.Advised, d.String())
	assert.Contains(t, d.String(), "All 4 pages lie in private anonymous memory")
	assert.Contains(t, d.String(), "2 of the 4 pages are not present")
	assert.True(t, d.Has(CodeEligible) && d.Has(CodeNotAdvised) && d.Has(CodeNotPresent), d.String())

	if BackendReason() == nil {
		r, err := Advise(mem)
		require.NoError(t, err)
		d = r.Diagnose()
		assert.True(t, d.Advised, d.String())
		assert.Contains(t, d.String(), "They are advised")
		require.NoError(t, r.Unadvise())
		assert.Contains(t, r.Diagnose().String(), "was unadvised")
		assert.False(t, DiagnoseRegion(mem).Advised)
	}

	d = DiagnoseRegion(mem[:100])
	assert.False(t, d.Eligible)
	assert.Contains(t, d.String(), "range holds no whole page")
	assert.True(t, d.Has(CodeTooSmall))

	hole := mmapPages(t, 3)
	require.NoError(t, unix.MunmapPtr(unsafe.Pointer(&hole[pageSize]), uintptr(pageSize)))
	d = DiagnoseRegion(hole)
	assert.False(t, d.Eligible)
	assert.Contains(t, d.String(), fmt.Sprintf("%s at %#x are not mapped", formatBytes(int64(pageSize)), addrOf(hole)+uintptr(pageSize)))
	assert.True(t, d.Has(CodeNotMapped))
}
