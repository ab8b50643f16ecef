// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMarkMergeDomainRefusesNonCgroup(t *testing.T) {
	dir := t.TempDir()
	err := MarkMergeDomain(dir, "fn")
	require.ErrorContains(t, err, "not a cgroup v2 directory")
	require.ErrorContains(t, UnmarkMergeDomain(dir), "not a cgroup v2 directory")
	require.Error(t, MarkMergeDomain(dir+"/vanished", "fn"))
}

func TestCheckMergeDomainName(t *testing.T) {
	for _, good := range []string{"fn", "default/imageclass:v3", "a@b+c=d_e-f.g", strings.Repeat("x", MaxMergeDomainName)} {
		require.NoError(t, CheckMergeDomainName(good), "%q", good)
	}
	for _, bad := range []string{"", strings.Repeat("x", MaxMergeDomainName+1), "two words", "tab\t", "nul\x00", "é", "semi;colon"} {
		require.Error(t, CheckMergeDomainName(bad), "%q", bad)
	}
	// A bad name is refused before anything is touched.
	require.ErrorContains(t, MarkMergeDomain(t.TempDir(), "two words"), "not a letter")
}
