// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
)

func TestMain(m *testing.M) {
	// run starts this test binary again as the child.
	if os.Getenv(childEnv) != "" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

func TestRun(t *testing.T) {
	var out strings.Builder
	require.NoError(t, run(&out))
	if errors.Is(upm.BackendReason(), upm.ErrUnsupported) {
		assert.Contains(t, out.String(), "stays writable")
		return
	}
	assert.Contains(t, out.String(), "table[42] = 0xeecb9046")
	assert.Contains(t, out.String(), "child: the write to 0x")
	assert.Contains(t, out.String(), "as it should")
}
