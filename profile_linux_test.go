// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/pprof/profile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// loadModelForProfile stands for the user's code that advises memory.
//
//go:noinline
func loadModelForProfile(t *testing.T, size int) *Region {
	r, err := Advise(make([]byte, size))
	require.NoError(t, err)
	return r
}

//go:noinline
func buildTableForProfile(t *testing.T) (*Arena, *Region) {
	a, err := NewArena(4 * pageSize)
	require.NoError(t, err)
	r, err := a.Seal()
	require.NoError(t, err)
	return a, r
}

// sampleOf returns the profile's sample whose leaf function is fn.
func sampleOf(t *testing.T, p *profile.Profile, fn string) *profile.Sample {
	t.Helper()
	for _, s := range p.Sample {
		if len(s.Location) > 0 && len(s.Location[0].Line) > 0 && s.Location[0].Line[0].Function.Name == fn {
			return s
		}
	}
	t.Fatalf("no sample of %s in the profile:\n%v", fn, p)
	return nil
}

func TestWriteProfile(t *testing.T) {
	requireMerging(t)
	model := loadModelForProfile(t, 32*pageSize)
	defer model.Unadvise()
	arena, table := buildTableForProfile(t)
	defer arena.Close()
	path := filepath.Join(t.TempDir(), "vocab.bin")
	require.NoError(t, os.WriteFile(path, pattern(6, 3*pageSize), 0o644))
	file, err := AdviseFile(path)
	require.NoError(t, err)
	defer file.Close()

	var buf bytes.Buffer
	require.NoError(t, WriteProfile(&buf))
	p, err := profile.Parse(&buf)
	require.NoError(t, err)

	require.Len(t, p.SampleType, 2)
	assert.Equal(t, "advised", p.SampleType[0].Type)
	assert.Equal(t, "bytes", p.SampleType[0].Unit)
	assert.Equal(t, "merged", p.SampleType[1].Type)
	assert.Equal(t, "bytes", p.SampleType[1].Unit)

	s := sampleOf(t, p, "github.com/upm-project/upm.loadModelForProfile")
	assert.Equal(t, int64(model.Len()), s.Value[0])
	assert.GreaterOrEqual(t, s.Value[1], int64(0))
	assert.LessOrEqual(t, s.Value[1], s.Value[0])
	assert.Equal(t, []string{"slice"}, s.Label["kind"])
	assert.Equal(t, []string{CurrentBackend().String()}, s.Label["backend"])
	require.GreaterOrEqual(t, len(s.Location), 2)
	assert.Equal(t, "github.com/upm-project/upm.TestWriteProfile", s.Location[1].Line[0].Function.Name)
	assert.True(t, strings.HasSuffix(s.Location[0].Line[0].Function.Filename, "profile_linux_test.go"))
	assert.NotZero(t, s.Location[0].Line[0].Line)

	s = sampleOf(t, p, "github.com/upm-project/upm.buildTableForProfile")
	assert.Equal(t, int64(table.Len()), s.Value[0])
	assert.Equal(t, []string{"arena"}, s.Label["kind"])

	s = sampleOf(t, p, "github.com/upm-project/upm.TestWriteProfile")
	assert.Equal(t, int64(file.Region().Len()), s.Value[0])
	assert.Equal(t, []string{"file"}, s.Label["kind"])
	assert.Equal(t, []string{path}, s.Label["file"])

	// Unadvised and closed regions leave the profile.
	require.NoError(t, model.Unadvise())
	require.NoError(t, arena.Close())
	buf.Reset()
	require.NoError(t, WriteProfile(&buf))
	p, err = profile.Parse(&buf)
	require.NoError(t, err)
	for _, s := range p.Sample {
		fn := s.Location[0].Line[0].Function.Name
		assert.NotContains(t, fn, "ForProfile", "a released region is still in the profile")
	}
}

func TestWriteProfileWithPprof(t *testing.T) {
	requireMerging(t)
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("needs the go command for go tool pprof")
	}
	// go tool builds pprof on demand, into the build cache.
	cache, err := exec.Command(goTool, "env", "GOCACHE").Output()
	if err != nil {
		t.Skipf("go tool pprof needs a Go build cache: %v", err)
	}
	if err := unix.Access(strings.TrimSpace(string(cache)), unix.W_OK); err != nil {
		t.Skipf("go tool pprof needs a writable Go build cache, and %s is not: %v", strings.TrimSpace(string(cache)), err)
	}
	r := loadModelForProfile(t, 16*pageSize)
	defer r.Unadvise()
	path := filepath.Join(t.TempDir(), "upm.pb.gz")
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, WriteProfile(f))
	require.NoError(t, f.Close())

	out, err := exec.Command(goTool, "tool", "pprof", "-top", "-sample_index=advised", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "upm.loadModelForProfile", "%s", out)
	assert.Contains(t, string(out), "Type: advised", "%s", out)
}

func TestConcurrentRegions(t *testing.T) {
	requireMerging(t)
	const workers = 8
	mems := make([][]byte, workers)
	for i := range mems {
		mems[i] = mmapPages(t, 4)
	}
	live := len(liveRegions())
	errs := make(chan error, 2*workers)
	done := make(chan struct{})
	go func() {
		// Profiles and statistics while regions come and go.
		defer close(done)
		for range 20 {
			if err := WriteProfile(io.Discard); err != nil {
				errs <- err
			}
			if _, err := ReadProcessStats(); err != nil {
				errs <- err
			}
		}
	}()
	var wg sync.WaitGroup
	for _, mem := range mems {
		wg.Go(func() {
			for range 10 {
				r, err := Advise(mem)
				if err != nil {
					errs <- err
					return
				}
				if _, _, err := r.Merged(); err != nil {
					errs <- err
				}
				if err := r.Unadvise(); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	<-done
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Len(t, liveRegions(), live)
}
