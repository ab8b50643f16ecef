// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeProbe answers detect with a UPM advice number or error, and a KSM
// error; it counts its calls.
type fakeProbe struct {
	goos               string
	advice             int
	upmErr, ksmErr     error
	upmCalls, ksmCalls int
}

func (f *fakeProbe) probe() probe {
	return probe{
		goos: f.goos,
		upmAdvice: func() (int, error) {
			f.upmCalls++
			return f.advice, f.upmErr
		},
		ksm: func() error {
			f.ksmCalls++
			return f.ksmErr
		},
	}
}

func TestDetect(t *testing.T) {
	noUPM := absent("open /sys/kernel/mm/upm/advice: no such file or directory")
	noKSM := absent("no /sys/kernel/mm/ksm: kernel built without CONFIG_KSM")

	for _, tc := range []struct {
		name        string
		env         string
		probe       fakeProbe
		backend     Backend
		advice      int
		errContains string // empty: no error
	}{
		{name: "UPM kernel", probe: fakeProbe{advice: 80}, backend: BackendUPM, advice: 80},
		{name: "UPM kernel, other number", env: "auto", probe: fakeProbe{advice: 91}, backend: BackendUPM, advice: 91},
		{name: "stock KSM", probe: fakeProbe{upmErr: noUPM}, backend: BackendKSM},
		{name: "no KSM", probe: fakeProbe{upmErr: noUPM, ksmErr: noKSM}, backend: BackendNone,
			errContains: "kernel has neither UPM (open /sys/kernel/mm/upm/advice: no such file or directory) nor KSM (no /sys/kernel/mm/ksm: kernel built without CONFIG_KSM)"},
		{name: "forced UPM", env: "upm", probe: fakeProbe{advice: 80}, backend: BackendUPM, advice: 80},
		{name: "forced UPM missing", env: "upm", probe: fakeProbe{upmErr: noUPM}, backend: BackendUPM,
			errContains: "UPM_BACKEND=upm, but the kernel does not offer MADV_UPM_MERGE"},
		{name: "forced KSM on UPM", env: " KSM ", probe: fakeProbe{advice: 80}, backend: BackendKSM},
		{name: "forced KSM missing", env: "ksm", probe: fakeProbe{ksmErr: noKSM}, backend: BackendKSM,
			errContains: "UPM_BACKEND=ksm, but the kernel has no usable KSM"},
		{name: "forced none", env: "none", probe: fakeProbe{advice: 80}, backend: BackendNone,
			errContains: "merging disabled by UPM_BACKEND=none"},
		{name: "bogus", env: "fast", probe: fakeProbe{advice: 80}, backend: BackendNone,
			errContains: `UPM_BACKEND="fast" is not one of upm, ksm, none or auto`},
		{name: "darwin", probe: fakeProbe{goos: "darwin"}, backend: BackendNone,
			errContains: "UPM and KSM are Linux kernel features, this is darwin"},
		{name: "windows forced", env: "upm", probe: fakeProbe{goos: "windows"}, backend: BackendNone,
			errContains: "this is windows"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.probe.goos == "" {
				tc.probe.goos = "linux"
			}
			d := detect(tc.env, tc.probe.probe())
			assert.Equal(t, tc.backend, d.backend)
			assert.Equal(t, tc.advice, d.advice)
			if tc.errContains == "" {
				assert.NoError(t, d.err)
				return
			}
			require.Error(t, d.err)
			assert.Contains(t, d.err.Error(), tc.errContains)
			assert.ErrorIs(t, d.err, ErrUnsupported)
			assert.ErrorIs(t, d.err, errors.ErrUnsupported)
		})
	}
}

func TestDetectAsksOnlyWhatItNeeds(t *testing.T) {
	f := fakeProbe{goos: "linux", advice: 80}
	detect("", f.probe())
	assert.Equal(t, 1, f.upmCalls)
	assert.Zero(t, f.ksmCalls, "KSM probed although the kernel has UPM")

	f = fakeProbe{goos: "linux"}
	detect("none", f.probe())
	assert.Zero(t, f.upmCalls+f.ksmCalls, "probed although UPM_BACKEND=none")
}

func TestBackendString(t *testing.T) {
	assert.Equal(t, "none", BackendNone.String())
	assert.Equal(t, "ksm", BackendKSM.String())
	assert.Equal(t, "upm", BackendUPM.String())
	assert.Equal(t, "Backend(7)", Backend(7).String())
}

func TestErrUnsupported(t *testing.T) {
	assert.ErrorIs(t, ErrUnsupported, errors.ErrUnsupported)
	err := fmt.Errorf("upm: advise 4096 bytes at 0x1000: %w", ErrUnsupported)
	assert.ErrorIs(t, err, ErrUnsupported)
	assert.ErrorIs(t, err, errors.ErrUnsupported)
	assert.NotErrorIs(t, errors.ErrUnsupported, ErrUnsupported)
	assert.Equal(t, "upm: advise 4096 bytes at 0x1000: not supported", err.Error())
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0:                 "0 bytes",
		1023:              "1023 bytes",
		1024:              "1 KiB",
		1536:              "1.5 KiB",
		64 << 20:          "64 MiB",
		3 << 30:           "3 GiB",
		5 << 40:           "5 TiB",
		-(2 << 20):        "-2 MiB",
		(64 << 20) + 1000: "64 MiB",
	} {
		assert.Equal(t, want, formatBytes(n), "%d bytes", n)
	}
}
