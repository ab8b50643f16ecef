// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMarkMergeDomainRefusesNonCgroup(t *testing.T) {
	dir := t.TempDir()
	err := MarkMergeDomain(dir)
	require.ErrorContains(t, err, "not a cgroup v2 directory")
	require.ErrorContains(t, UnmarkMergeDomain(dir), "not a cgroup v2 directory")
	require.Error(t, MarkMergeDomain(dir+"/vanished"))
}
