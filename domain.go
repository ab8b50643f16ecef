// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"strings"
)

// MergeDomainXattr is the extended attribute that names the merge domain of
// a cgroup v2 directory and of every cgroup below it.
//
// The UPM kernel merges a page only with pages of processes in the same
// merge domain, so that one tenant cannot learn another's page contents from
// the time a copy-on-write fault takes, or from any counter. A process's
// domain is named by the nearest cgroup at or above its own that carries
// this attribute: cgroups anywhere in the hierarchy whose marks carry the
// same name are one domain. Without a mark, a process's own cgroup is its
// domain: by default, processes in different cgroups never share. A
// function platform that runs each instance in a cgroup of its own gives
// their cgroups (or a common parent) the function's name with
// MarkMergeDomain; on Kubernetes, where the pods of one function sit under
// different pod cgroups, the name is what joins them. Only root
// (CAP_SYS_ADMIN) can set trusted.* attributes, so a tenant cannot widen
// its own domain.
const MergeDomainXattr = "trusted.upm.domain"

// MaxMergeDomainName is the longest merge domain name the kernel accepts.
const MaxMergeDomainName = 64

// mergeDomainNameChars are the characters a name may have besides ASCII
// letters and digits: enough for "namespace/function:version" and the like,
// none that needs quoting in the kernel's domains file.
const mergeDomainNameChars = "-_.:/@+="

// CheckMergeDomainName returns an error unless name is a merge domain name
// the kernel accepts: 1 to MaxMergeDomainName ASCII letters, digits and
// characters of "-_.:/@+=". The kernel takes a mark with any other value
// for a domain of the marked cgroup's subtree alone.
func CheckMergeDomainName(name string) error {
	if name == "" || len(name) > MaxMergeDomainName {
		return fmt.Errorf("upm: merge domain name %q: must be 1 to %d characters long", name, MaxMergeDomainName)
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(mergeDomainNameChars, c) >= 0) {
			return fmt.Errorf("upm: merge domain name %q: %q is not a letter, digit or one of %q", name, c, mergeDomainNameChars)
		}
	}
	return nil
}

// MarkMergeDomain puts the cgroup v2 directory dir, with every cgroup below
// it, into the merge domain called name (see CheckMergeDomainName), which it
// shares with every other cgroup marked with that name. It needs
// CAP_SYS_ADMIN. Processes already running there use the new domain from
// their next Advise on.
//
// On a kernel without UPM nothing reads the mark (ksmd is not domain-aware),
// so MarkMergeDomain sets nothing and returns an error wrapping
// ErrUnsupported.
func MarkMergeDomain(dir, name string) error {
	if err := CheckMergeDomainName(name); err != nil {
		return err
	}
	return sysMarkMergeDomain(dir, name)
}

// UnmarkMergeDomain removes the mark MarkMergeDomain set on dir. It is not
// an error if dir carries no mark.
func UnmarkMergeDomain(dir string) error {
	return sysUnmarkMergeDomain(dir)
}

// MergeDomainOf returns the merge domain of the process pid, as Diagnose
// reports this process's own: the marked cgroup at or above the process's
// cgroup v2 cgroup, or that cgroup itself. Reading the marks of other
// cgroups needs CAP_SYS_ADMIN, as for Diagnose (see MergeDomain.MarkKnown).
func MergeDomainOf(pid int) (MergeDomain, error) {
	return sysMergeDomainOf(pid)
}
