// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

// MergeDomainXattr is the extended attribute that marks a cgroup v2
// directory as one merge domain for its whole subtree.
//
// The UPM kernel merges a page only with pages of processes in the same
// merge domain, so that one tenant cannot learn another's page contents from
// the time a copy-on-write fault takes. A process's domain is the nearest
// cgroup at or above its own that carries this attribute, or else its own
// cgroup: by default, processes in different cgroups never share. A function
// platform that runs each instance in a cgroup of its own marks their common
// parent (all instances of one function, or of one tenant) with
// MarkMergeDomain. Only root (CAP_SYS_ADMIN) can set trusted.* attributes,
// so a tenant cannot widen its own domain.
const MergeDomainXattr = "trusted.upm.domain"

// MarkMergeDomain makes the cgroup v2 directory dir, with every cgroup below
// it, one merge domain of the UPM kernel. It needs CAP_SYS_ADMIN. Processes
// already running there use the new domain from their next Advise on.
//
// On a kernel without UPM nothing reads the mark (ksmd is not domain-aware),
// so MarkMergeDomain sets nothing and returns an error wrapping
// ErrUnsupported.
func MarkMergeDomain(dir string) error {
	return sysMarkMergeDomain(dir)
}

// UnmarkMergeDomain removes the mark MarkMergeDomain set on dir. It is not
// an error if dir carries no mark.
func UnmarkMergeDomain(dir string) error {
	return sysUnmarkMergeDomain(dir)
}
