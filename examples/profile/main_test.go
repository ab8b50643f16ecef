// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/pprof/profile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
)

func TestRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "upm.pb.gz")
	var out strings.Builder
	require.NoError(t, run(&out, path))
	if errors.Is(upm.BackendReason(), upm.ErrUnsupported) {
		assert.Contains(t, out.String(), "nothing to profile")
		return
	}
	assert.Contains(t, out.String(), "go tool pprof -top "+path)
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	p, err := profile.Parse(f)
	require.NoError(t, err)
	require.Len(t, p.Sample, 2)
	var funcs []string
	for _, s := range p.Sample {
		name := s.Location[0].Line[0].Function.Name
		funcs = append(funcs, name[strings.LastIndex(name, ".")+1:])
	}
	assert.ElementsMatch(t, []string{"loadWeights", "buildTable"}, funcs)
	assert.EqualValues(t, 8<<20, p.Sample[0].Value[0])
}
