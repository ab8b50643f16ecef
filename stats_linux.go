// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// The totals of smaps_rollup come from github.com/prometheus/procfs. It has
// no reader for /proc/self/ksm_stat or /sys/kernel/mm/ksm (nor, naturally,
// /sys/kernel/mm/upm), so those are parsed here.

func processStats(s *ProcessStats) error {
	proc, err := procfs.NewDefaultFS()
	if err != nil {
		return fmt.Errorf("upm: process stats: %w", err)
	}
	self, err := proc.Self()
	if err != nil {
		return fmt.Errorf("upm: process stats: %w", err)
	}
	rollup, err := self.ProcSMapsRollup()
	if err != nil {
		return fmt.Errorf("upm: process stats: smaps_rollup: %w", err)
	}
	s.Rss, s.Pss, s.Anonymous, s.Swap = rollup.Rss, rollup.Pss, rollup.Anonymous, rollup.Swap

	f, err := os.Open(procKSMStat)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // Before Linux 6.1.
	}
	if err != nil {
		return fmt.Errorf("upm: process stats: %w", err)
	}
	defer f.Close()
	stat, err := parseKSMStat(f)
	if err != nil {
		return fmt.Errorf("upm: process stats: %s: %w", procKSMStat, err)
	}
	s.KSMStat = true
	s.MergingPages = uint64(max(stat["ksm_merging_pages"], 0))
	s.RmapItems = uint64(max(stat["ksm_rmap_items"], 0))
	s.ZeroPages = uint64(max(stat["ksm_zero_pages"], 0))
	s.Profit = stat["ksm_process_profit"]
	return nil
}

// parseKSMStat parses the "name number" lines of /proc/<pid>/ksm_stat. Lines
// whose value is not a number ("ksm_mergeable yes") are left out.
func parseKSMStat(r io.Reader) (map[string]int64, error) {
	stat := make(map[string]int64)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, value, ok := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64); err == nil {
			stat[name] = n
		}
	}
	return stat, sc.Err()
}

func systemStats() (SystemStats, error) {
	var s SystemStats
	var errs []error

	ksm, err := readNumberDir(sysKSMDir, "")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if ksm != nil {
		v := ksm.values
		s.KSM = KSMStats{
			Present:        true,
			Run:            v["run"],
			PagesToScan:    v["pages_to_scan"],
			SleepMillisecs: v["sleep_millisecs"],
			PagesShared:    v["pages_shared"],
			PagesSharing:   v["pages_sharing"],
			PagesUnshared:  v["pages_unshared"],
			PagesVolatile:  v["pages_volatile"],
			FullScans:      v["full_scans"],
			ZeroPages:      v["ksm_zero_pages"],
			GeneralProfit:  ksm.signed["general_profit"],
			Values:         v,
		}
	}

	upm, err := readNumberDir(sysUPMDir, sysUPMDomains)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if upm != nil {
		v := upm.values
		s.UPM = UPMStats{
			Present:           true,
			Advice:            int(v["advice"]),
			PagesAdvised:      v["pages_advised"],
			PagesMergedStable: v["pages_merged_stable"],
			PagesMergedNew:    v["pages_merged_new"],
			PagesSkipped:      v["pages_skipped"],
			Candidates:        v["candidates"],
			CandidatesDropped: v["candidates_dropped"],
			IndexBytes:        v["index_bytes"],
			Calls:             v["calls"],
			CallTime:          time.Duration(v["call_time_ns"]),
			Revisits:          v["revisits"],
			PagesRemerged:     v["pages_remerged"],
			Values:            v,
		}
		domains, err := readDomainStats(filepath.Join(sysUPMDir, sysUPMDomains))
		switch {
		case err == nil:
			s.UPM.Domains, s.UPM.DomainsReadable = domains, true
		case errors.Is(err, fs.ErrPermission), errors.Is(err, fs.ErrNotExist):
			// Root only, or a kernel without per-domain statistics.
		default:
			errs = append(errs, err)
		}
	}

	if !s.KSM.Present && !s.UPM.Present && len(errs) == 0 {
		return s, fmt.Errorf("upm: system stats: kernel has neither %s nor %s: %w", sysKSMDir, sysUPMDir, ErrUnsupported)
	}
	if len(errs) > 0 {
		return s, fmt.Errorf("upm: system stats: %w", errors.Join(errs...))
	}
	return s, nil
}

// numberDir is the content of a sysfs directory of numbers.
type numberDir struct {
	values map[string]uint64 // files holding an unsigned number
	signed map[string]int64  // files holding a signed number
}

// readNumberDir reads every regular file of dir but skip that holds one
// decimal number. It returns what it could read and an error for the files it
// could not; it returns nil and the error if dir itself cannot be read.
func readNumberDir(dir, skip string) (*numberDir, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	d := &numberDir{values: make(map[string]uint64), signed: make(map[string]int64)}
	var errs []error
	for _, e := range entries {
		if !e.Type().IsRegular() || e.Name() == skip {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		text := strings.TrimSpace(string(data))
		if n, err := strconv.ParseUint(text, 10, 64); err == nil {
			d.values[e.Name()] = n
		}
		if n, err := strconv.ParseInt(text, 10, 64); err == nil {
			d.signed[e.Name()] = n
		}
	}
	return d, errors.Join(errs...)
}

// sysUPMDomains is the UPM kernel's per-domain statistics file in sysUPMDir.
const sysUPMDomains = "domains"

// readDomainStats reads the kernel's per-domain statistics file.
func readDomainStats(path string) ([]DomainStats, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	domains, err := parseDomainStats(string(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return domains, nil
}

// parseDomainStats parses the lines of /sys/kernel/mm/upm/domains: a
// "# ..." header naming the columns, then per domain "name:NAME" or
// "cgroup:ID" and six numbers.
func parseDomainStats(text string) ([]DomainStats, error) {
	domains := []DomainStats{}
	for i, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 6 {
			return nil, fmt.Errorf("line %d: %d fields, want 6: %q", i+1, len(f), line)
		}
		var d DomainStats
		kind, id, _ := strings.Cut(f[0], ":")
		switch kind {
		case "name":
			if err := CheckMergeDomainName(id); err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			d.Name = id
		case "cgroup":
			n, err := strconv.ParseUint(id, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: cgroup ID: %w", i+1, err)
			}
			d.CgroupID = n
		default:
			return nil, fmt.Errorf("line %d: domain %q is neither name: nor cgroup:", i+1, f[0])
		}
		for j, p := range []*uint64{&d.Processes, &d.PagesShared, &d.PagesSharing, &d.Candidates, &d.IndexBytes} {
			n, err := strconv.ParseUint(f[j+1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: field %d: %w", i+1, j+2, err)
			}
			*p = n
		}
		domains = append(domains, d)
	}
	return domains, nil
}
