// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
)

func runHook(t *testing.T, state string) (string, error) {
	t.Helper()
	old := stdin
	stdin = strings.NewReader(state)
	defer func() { stdin = old }()
	var out, errOut bytes.Buffer
	err := run([]string{"oci-hook"}, &out, &errOut)
	return errOut.String(), err
}

func stateJSON(t *testing.T, s ociState) string {
	b, err := json.Marshal(s)
	require.NoError(t, err)
	return string(b)
}

func TestOCIHookRefusesBadInput(t *testing.T) {
	for name, state := range map[string]string{
		"not JSON":  "{",
		"empty":     "",
		"bad name":  stateJSON(t, ociState{ID: "c1", PID: os.Getpid(), Annotations: map[string]string{domainAnnotation: "has space"}}),
		"long name": stateJSON(t, ociState{ID: "c1", PID: os.Getpid(), Annotations: map[string]string{domainAnnotation: strings.Repeat("a", upm.MaxMergeDomainName+1)}}),
		"no pid":    stateJSON(t, ociState{ID: "c1", Annotations: map[string]string{domainAnnotation: "fn"}}),
		"gone pid":  stateJSON(t, ociState{ID: "c1", PID: 1 << 30, Annotations: map[string]string{domainAnnotation: "fn"}}),
	} {
		_, err := runHook(t, state)
		assert.Error(t, err, name)
		assert.Contains(t, err.Error(), "oci-hook", name)
	}
	_, err := runHook(t, "{}")
	assert.NoError(t, err, "no annotation: the container is left alone")
	var out, errOut bytes.Buffer
	assert.ErrorIs(t, run([]string{"oci-hook", "extra"}, &out, &errOut), errUsage)
}

// TestOCIHookWithoutUPM: on a kernel without UPM a valid state changes
// nothing and succeeds, saying why on stderr.
func TestOCIHookWithoutUPM(t *testing.T) {
	if st, _ := upm.ReadSystemStats(); st.UPM.Present {
		t.Skip("the kernel has UPM: TestCommandOnTheNode's hook part covers it in the guest")
	}
	msg, err := runHook(t, stateJSON(t, ociState{OCIVersion: "1.2.0", ID: "c1", Status: "creating", PID: os.Getpid(),
		Annotations: map[string]string{domainAnnotation: "fn/imageclass"}}))
	require.NoError(t, err)
	assert.Contains(t, msg, "left alone")
}
