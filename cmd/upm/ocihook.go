// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/upm-project/upm"
)

// domainAnnotation is the container annotation that names the merge domain
// of a container's cgroup.
const domainAnnotation = "io.upm.domain"

// ociState is what an OCI runtime gives a hook on stdin: the container's
// state (runtime-spec, "State"). Only these fields matter here, so the
// struct is ours rather than a dependency on the runtime-spec module.
type ociState struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Status      string            `json:"status"`
	PID         int               `json:"pid"`
	Bundle      string            `json:"bundle"`
	Annotations map[string]string `json:"annotations"`
}

// ociHook marks the cgroup of the container described on stdin with the
// merge domain its io.upm.domain annotation names. Without the annotation,
// or on a kernel without UPM, it leaves the container alone and succeeds;
// a bad state or name fails (exit status 1), with the reason on stderr, so
// that the runtime stops rather than run an instance that would share with
// no one.
func ociHook(stdin io.Reader, stdout, stderr io.Writer) error {
	var st ociState
	dec := json.NewDecoder(io.LimitReader(stdin, 1<<20))
	if err := dec.Decode(&st); err != nil {
		return fmt.Errorf("oci-hook: reading the container state on stdin: %w", err)
	}
	name, ok := st.Annotations[domainAnnotation]
	if !ok {
		return nil
	}
	if err := upm.CheckMergeDomainName(name); err != nil {
		return fmt.Errorf("oci-hook: container %s: annotation %s: %w", st.ID, domainAnnotation, err)
	}
	if st.PID <= 0 {
		return fmt.Errorf("oci-hook: container %s: the state has no pid (the hook runs at createRuntime, createContainer or startContainer)", st.ID)
	}
	cgroup := readCgroup(fmt.Sprintf("/proc/%d/cgroup", st.PID))
	if cgroup == "" {
		return fmt.Errorf("oci-hook: container %s: process %d is in no cgroup v2 cgroup (or is gone)", st.ID, st.PID)
	}
	dir := filepath.Join(cgroupRoot, filepath.Clean("/"+cgroup))
	err := upm.MarkMergeDomain(dir, name)
	if errors.Is(err, upm.ErrUnsupported) {
		fmt.Fprintf(stderr, "upm oci-hook: container %s left alone: %v\n", st.ID, err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("oci-hook: container %s: %w", st.ID, err)
	}
	fmt.Fprintf(stderr, "upm oci-hook: container %s: cgroup %s is merge domain %q\n", st.ID, dir, name)
	return nil
}
