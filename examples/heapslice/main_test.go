// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
)

func TestRun(t *testing.T) {
	var out strings.Builder
	require.NoError(t, run(&out, 2))
	if errors.Is(upm.BackendReason(), upm.ErrUnsupported) {
		assert.Contains(t, out.String(), "not advised")
		return
	}
	assert.Contains(t, out.String(), "advised 2097152 of the slice's 2097152 bytes")
	assert.Contains(t, out.String(), "unadvised")
}
