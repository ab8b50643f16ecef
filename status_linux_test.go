// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestBackendOutlook(t *testing.T) {
	ksm := detection{backend: BackendKSM}
	upm := detection{backend: BackendUPM, advice: 80}
	for _, tc := range []struct {
		name     string
		det      detection
		files    map[string]string
		state    MergeState
		code     string
		estimate time.Duration
	}{
		{"ksmd stopped", ksm, map[string]string{"run": "0"}, StateNotMerging, CodeKSMDStopped, 0},
		{"ksm unmerging", ksm, map[string]string{"run": "2"}, StateNotMerging, CodeKSMUnmerging, 0},
		{"ksmd idle", ksm, map[string]string{"run": "1", "pages_to_scan": "0", "sleep_millisecs": "20"}, StateNotMerging, CodeKSMDIdle, 0},
		// 5000 pages a second; 64 MiB is 16384 pages, seen twice.
		{"ksmd running", ksm, map[string]string{"run": "1", "pages_to_scan": "100", "sleep_millisecs": "20"}, StatePending, CodeKSMDRunning, 6553600 * time.Microsecond},
		// Other processes' pages are scanned too.
		{"ksmd running, busy", ksm, map[string]string{"run": "1", "pages_to_scan": "100", "sleep_millisecs": "20", "pages_unshared": "32768"}, StatePending, CodeKSMDRunning, 13107200 * time.Microsecond},
		{"advisor", ksm, map[string]string{"run": "1", "pages_to_scan": "100", "sleep_millisecs": "20", "advisor_mode": "none [scan-time]", "advisor_target_scan_time": "200"}, StatePending, CodeKSMDRunning, 400 * time.Second},
		{"ksm unknown", ksm, nil, StateUnknown, CodeKSMDUnknown, 0},
		{"upm", upm, map[string]string{"run": "0"}, StateMerged, CodeUPM, 0},
		{"upm unmerging", upm, map[string]string{"run": "2"}, StateNotMerging, CodeKSMUnmerging, 0},
		{"none", detection{err: fmt.Errorf("kernel has neither UPM nor KSM: %w", ErrUnsupported)}, nil, StateNotMerging, CodeUnsupported, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := backendOutlook(tc.det, fakeKSM(t, tc.files), 64<<20)
			assert.Equal(t, tc.state, o.status.State, o.status.String())
			assert.Equal(t, tc.code, o.status.Code)
			assert.Equal(t, tc.estimate, o.status.Estimate)
			assert.NotEmpty(t, o.status.Reason)
		})
	}
	o := backendOutlook(ksm, fakeKSM(t, map[string]string{"run": "0"}), 0)
	assert.Contains(t, o.status.Reason, "echo 1 > ")
}

func TestRegionStatus(t *testing.T) {
	requireMerging(t)
	mem := mmapPages(t, 4)
	copy(mem, pattern(5, len(mem)))
	r, err := Advise(mem)
	require.NoError(t, err)
	st := r.Status()
	switch CurrentBackend() {
	case BackendKSM:
		run, err := readSysInt(filepath.Join(sysKSMDir, "run"))
		require.NoError(t, err)
		switch run {
		case 0:
			assert.Equal(t, StateNotMerging, st.State)
			assert.Equal(t, CodeKSMDStopped, st.Code)
		case 1:
			assert.Equal(t, StatePending, st.State, st.String())
		}
	case BackendUPM:
		assert.Contains(t, []MergeState{StateMerged, StateNotMerging}, st.State, st.String())
	}
	require.NoError(t, r.Unadvise())
	assert.Equal(t, StateClosed, r.Status().State)
	assert.Equal(t, StateClosed, (*Region)(nil).Status().State)

	// KSM ignores advice on a shared mapping: the Region says it will not
	// merge.
	if CurrentBackend() == BackendKSM {
		shared, err := unix.Mmap(-1, 0, 2*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
		require.NoError(t, err)
		defer unix.Munmap(shared)
		withDetection(t, detection{backend: BackendKSM})
		r, err := Advise(shared)
		require.NoError(t, err)
		defer r.Unadvise()
		files := systemFiles()
		if o := backendOutlook(detection{backend: BackendKSM}, files, 0); o.status.State == StatePending {
			st := r.Status()
			assert.Equal(t, StateNotMerging, st.State, st.String())
			assert.Equal(t, CodeMappingNotMergeable, st.Code)
		}
	}
}

// fakeCgroups makes a cgroup tree under a temporary root: every path in
// procs gets a cgroup.procs file with that many processes.
func fakeCgroups(t *testing.T, procs map[string]int) string {
	t.Helper()
	root := t.TempDir()
	for dir, n := range procs {
		d := filepath.Join(root, dir)
		require.NoError(t, os.MkdirAll(d, 0o755))
		var content []byte
		for i := range n {
			content = strconv.AppendInt(content, int64(100+i), 10)
			content = append(content, '\n')
		}
		require.NoError(t, os.WriteFile(filepath.Join(d, "cgroup.procs"), content, 0o644))
	}
	return root
}

func TestMergeDomain(t *testing.T) {
	root := fakeCgroups(t, map[string]int{"": 0, "fn": 0, "fn/i0": 1, "fn/i1": 1, "other": 5})
	self := filepath.Join(t.TempDir(), "cgroup")
	require.NoError(t, os.WriteFile(self, []byte("0::/fn/i0\n"), 0o644))

	d := readMergeDomain(root, self)
	assert.Equal(t, filepath.Join(root, "fn/i0"), d.Cgroup)
	assert.False(t, d.Marked)
	assert.Equal(t, 1, d.Processes)
	assert.Equal(t, hasCapability(capSysAdmin), d.MarkKnown)

	files := sysFiles{ksmDir: t.TempDir(), kpageflags: "/nonexistent", cgroupRoot: root, procCgroup: self, pfns: func() bool { return false }}
	diag := diagnose(detection{backend: BackendUPM, advice: 80}, files, nil)
	assert.Equal(t, d, diag.Domain)
	require.True(t, diag.Has(CodeAloneInMergeDomain), diag.String())
	assert.Contains(t, diag.String(), "Nothing to merge with: each instance has its own cgroup")
	assert.Contains(t, diag.String(), "Mark their parent or give them one domain name (see upm.MarkMergeDomain)")
	assert.Contains(t, diag.String(), filepath.Join(root, "fn/i0"))

	// Marking the parent makes the two instances one domain. Only root can
	// set trusted.* attributes, and only where the file system keeps them.
	if err := unix.Setxattr(filepath.Join(root, "fn"), MergeDomainXattr, []byte("1"), 0); err != nil {
		t.Logf("cannot mark %s (%v): the marked case is not checked", root, err)
		return
	}
	d = readMergeDomain(root, self)
	assert.Equal(t, filepath.Join(root, "fn"), d.Cgroup)
	assert.True(t, d.Marked)
	assert.Equal(t, 2, d.Processes)
	diag = diagnose(detection{backend: BackendUPM, advice: 80}, files, nil)
	assert.False(t, diag.Has(CodeAloneInMergeDomain), diag.String())
	assert.True(t, diag.Has(CodeMergeDomain))
}

// TestMergedStreams: counting the merged pages of a large region must not
// allocate per page.
func TestMergedStreams(t *testing.T) {
	requireMerging(t)
	const size = 64 << 20
	mem := mmapPages(t, size/pageSize)
	for i := 0; i < len(mem); i += pageSize {
		mem[i] = byte(i / pageSize)
	}
	r, err := Advise(mem)
	require.NoError(t, err)
	defer r.Unadvise()
	_, _, err = r.Merged() // warm up: the KPF_KSM probe, file opens
	require.NoError(t, err)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err = r.Merged()
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	// 16384 pages: collecting their frame numbers took 128 KiB and more.
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<10), "Merged allocated per page")
}

// TestMergeDomainUnprivileged: without CAP_SYS_ADMIN the marks cannot be
// read, and Diagnose says the domain is the process's own cgroup unless an
// unseen parent is marked.
func TestMergeDomainUnprivileged(t *testing.T) {
	if !runPrivilegesDropped(t, "TestMergeDomainUnprivileged") {
		return
	}
	if hasCapability(capSysAdmin) {
		t.Skip("runs with CAP_SYS_ADMIN")
	}
	root := fakeCgroups(t, map[string]int{"": 0, "fn": 0, "fn/i0": 1})
	self := filepath.Join(t.TempDir(), "cgroup")
	require.NoError(t, os.WriteFile(self, []byte("0::/fn/i0\n"), 0o644))
	d := readMergeDomain(root, self)
	assert.False(t, d.MarkKnown)
	assert.Equal(t, 1, d.Processes)
	files := sysFiles{ksmDir: t.TempDir(), kpageflags: "/nonexistent", cgroupRoot: root, procCgroup: self}
	diag := diagnose(detection{backend: BackendUPM, advice: 80}, files, nil)
	assert.True(t, diag.Has(CodeAloneInMergeDomain), diag.String())
	assert.True(t, diag.Has(CodeCountsApproximate), diag.String())
	assert.Contains(t, diag.String(), "unless root marked a cgroup above it, which this process cannot see without CAP_SYS_ADMIN")
}
