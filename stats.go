// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import "time"

// ProcessStats describes the merging of this process's memory.
type ProcessStats struct {
	// Regions is the number of live Regions, and AdvisedBytes the bytes
	// they span.
	Regions      int
	AdvisedBytes int64

	// KSMStat reports whether the kernel has /proc/self/ksm_stat (Linux 6.1
	// and later), the source of the next four fields; they are zero
	// without it, and each is zero on kernels that do not print its line.
	KSMStat bool
	// MergingPages is the number of this process's pages that are mapped
	// to merged (KSM) pages: ksm_merging_pages.
	MergingPages uint64
	// RmapItems is the number of this process's pages that the kernel
	// tracks for merging: ksm_rmap_items.
	RmapItems uint64
	// ZeroPages is the number of empty pages merged into the zero page,
	// which KSM does when /sys/kernel/mm/ksm/use_zero_pages is 1:
	// ksm_zero_pages.
	ZeroPages uint64
	// Profit is the memory merging saves this process, in bytes, less what
	// the kernel spends tracking its pages; negative while little is
	// merged: ksm_process_profit.
	Profit int64

	// Rss, Pss, Anonymous and Swap are the process's totals from
	// /proc/self/smaps_rollup, in bytes. Merged pages count fully in Rss
	// but are divided among their sharers in Pss.
	Rss       uint64
	Pss       uint64
	Anonymous uint64
	Swap      uint64
}

// ReadProcessStats returns statistics about this process's advised and merged
// memory. Outside Linux it returns an error wrapping ErrUnsupported.
func ReadProcessStats() (ProcessStats, error) {
	s := ProcessStats{}
	for _, r := range liveRegions() {
		s.Regions++
		s.AdvisedBytes += int64(r.size)
	}
	err := processStats(&s)
	return s, err
}

// SystemStats is the state of the kernel's page merging.
type SystemStats struct {
	KSM KSMStats
	UPM UPMStats
}

// KSMStats are the counters and settings of KSM in /sys/kernel/mm/ksm, as
// Documentation/admin-guide/mm/ksm.rst describes them.
type KSMStats struct {
	// Present reports whether the kernel has KSM.
	Present bool
	// Run is 0 when ksmd is stopped, 1 when it merges, and 2 when it
	// unmerges every merged page.
	Run uint64
	// PagesToScan pages are scanned every SleepMillisecs milliseconds.
	PagesToScan    uint64
	SleepMillisecs uint64
	// PagesShared is the number of merged (KSM) pages in use, and
	// PagesSharing the number of sites that share them beyond the first:
	// the pages saved.
	PagesShared  uint64
	PagesSharing uint64
	// PagesUnshared is the number of pages that are unique but checked
	// repeatedly, and PagesVolatile those that change too fast to merge.
	PagesUnshared uint64
	PagesVolatile uint64
	// FullScans is the number of passes over all mergeable memory.
	FullScans uint64
	// ZeroPages is the number of empty pages merged into the zero page.
	ZeroPages uint64
	// GeneralProfit is the memory saved, in bytes, less what KSM spends on
	// tracking pages; it can be negative.
	GeneralProfit int64
	// Values holds every file of the directory whose content is one
	// unsigned decimal number, by file name, the above included.
	Values map[string]uint64
}

// SavedBytes returns the memory that merging saves, PagesSharing pages.
func (s KSMStats) SavedBytes() int64 {
	return int64(s.PagesSharing) * int64(pageSize)
}

// UPMStats are the counters of a UPM kernel in /sys/kernel/mm/upm.
type UPMStats struct {
	// Present reports whether the kernel has UPM.
	Present bool
	// Advice is the madvise advice number of MADV_UPM_MERGE.
	Advice int
	// PagesAdvised is the number of present pages MADV_UPM_MERGE looked
	// at. PagesMergedStable were merged into an existing merged page, and
	// PagesMergedNew were merged in pairs into a new one (two a pair).
	// PagesSkipped could not be merged when advised, being locked or
	// pinned; advising them again retries.
	PagesAdvised      uint64
	PagesMergedStable uint64
	PagesMergedNew    uint64
	PagesSkipped      uint64
	// Candidates is the number of advised pages that wait in UPM's index
	// for an identical page, CandidatesDropped the number dropped from it
	// because their page changed or went away, and IndexBytes the memory
	// the index uses.
	Candidates        uint64
	CandidatesDropped uint64
	IndexBytes        uint64
	// Calls is the number of MADV_UPM_MERGE calls, and CallTime the time
	// spent in them.
	Calls    uint64
	CallTime time.Duration
	// Revisits is the number of times the kernel looked again at advised
	// memory of a process after its merged pages were swapped in, copied
	// on write or unmapped, and PagesRemerged the pages it merged again
	// then (pages that came back from swap as copies). Zero on kernels
	// that do not revisit.
	Revisits      uint64
	PagesRemerged uint64
	// Values holds every file of the directory whose content is one
	// unsigned decimal number, by file name, the above included.
	Values map[string]uint64
	// Domains are the figures of each merge domain the kernel holds
	// anything for, from /sys/kernel/mm/upm/domains. Only root can read
	// them (domain names are tenants' data): without the privilege, or
	// on a kernel without per-domain statistics, Domains is nil and
	// DomainsReadable false.
	Domains         []DomainStats
	DomainsReadable bool
}

// DomainStats are one merge domain's figures on a UPM kernel.
type DomainStats struct {
	// Name is the domain's name (see MarkMergeDomain); empty for a domain
	// that is the subtree of one cgroup, whose cgroup ID (the inode number
	// of its directory in the cgroup v2 file system) is CgroupID.
	Name     string
	CgroupID uint64
	// Processes is the number of processes whose last Advise merged in
	// this domain.
	Processes uint64
	// PagesShared is the number of the domain's merged pages in use and
	// PagesSharing the number of sites that share them beyond the first:
	// the pages saved.
	PagesShared  uint64
	PagesSharing uint64
	// Candidates is the number of the domain's advised pages waiting for
	// a twin, and IndexBytes the memory of its index and candidates.
	Candidates uint64
	IndexBytes uint64
}

// SavedBytes returns the memory merging saves in the domain, PagesSharing
// pages.
func (d DomainStats) SavedBytes() int64 {
	return int64(d.PagesSharing) * int64(pageSize)
}

// ReadSystemStats returns the state of KSM and UPM in the kernel. It returns
// an error wrapping ErrUnsupported when the kernel has neither, or outside
// Linux. When some files cannot be read, the error names them and the fields
// read from the other files are set.
func ReadSystemStats() (SystemStats, error) {
	return systemStats()
}
