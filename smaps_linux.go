// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// This file parses /proc/self/smaps. github.com/prometheus/procfs reads only
// the roll-up of smaps (Proc.ProcSMapsRollup) and /proc/self/maps, which has
// neither the VmFlags line (is a mapping mergeable, shared, hugetlb?) nor
// the per-mapping KSM line, and those are what Merged and DiagnoseRegion need.

// vma is one memory mapping of /proc/self/smaps.
type vma struct {
	start, end uintptr
	perms      string // as in the header: "rw-p"
	path       string // file, "[heap]", "[anon:...]", or empty
	// kB holds the "Name: N kB" lines, in kilobytes.
	kB    map[string]uint64
	flags []string // VmFlags mnemonics: "rd", "wr", "mg", ...
}

func (v *vma) size() uintptr { return v.end - v.start }

func (v *vma) hasFlag(f string) bool { return slices.Contains(v.flags, f) }

// bytes returns the value of smaps line name in bytes, and whether the kernel
// printed that line.
func (v *vma) bytes(name string) (int64, bool) {
	n, ok := v.kB[name]
	return int64(n) * 1024, ok
}

// fileBacked reports whether the mapping maps a file rather than anonymous
// memory.
func (v *vma) fileBacked() bool {
	return strings.HasPrefix(v.path, "/")
}

// readSmaps reads and parses /proc/self/smaps.
func readSmaps() ([]vma, error) {
	f, err := os.Open(procSmaps)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vmas, err := parseSmaps(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", procSmaps, err)
	}
	return vmas, nil
}

// parseSmaps parses the smaps format of proc(5).
func parseSmaps(r io.Reader) ([]vma, error) {
	var vmas []vma
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		key, value, isField := strings.Cut(line, ":")
		if isField && !strings.ContainsAny(key, " -") {
			if len(vmas) == 0 {
				return nil, fmt.Errorf("field %q before the first mapping", key)
			}
			v := &vmas[len(vmas)-1]
			if key == "VmFlags" {
				v.flags = strings.Fields(value)
				continue
			}
			num, isKB := strings.CutSuffix(strings.TrimSpace(value), " kB")
			if !isKB {
				continue // THPeligible, ProtectionKey: not sizes.
			}
			n, err := strconv.ParseUint(num, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("field %s: %w", key, err)
			}
			v.kB[key] = n
			continue
		}
		v, err := parseMapsHeader(line)
		if err != nil {
			return nil, err
		}
		vmas = append(vmas, v)
	}
	return vmas, sc.Err()
}

// parseMapsHeader parses "start-end perms offset dev inode path".
func parseMapsHeader(line string) (vma, error) {
	rest := line
	var fields [5]string
	for i := range fields {
		rest = strings.TrimLeft(rest, " ")
		var ok bool
		fields[i], rest, ok = strings.Cut(rest, " ")
		if !ok && i < len(fields)-1 {
			return vma{}, fmt.Errorf("mapping line %q: too few fields", line)
		}
	}
	lo, hi, ok := strings.Cut(fields[0], "-")
	if !ok {
		return vma{}, fmt.Errorf("mapping line %q: no address range", line)
	}
	start, err := strconv.ParseUint(lo, 16, 64)
	if err != nil {
		return vma{}, fmt.Errorf("mapping line %q: %w", line, err)
	}
	end, err := strconv.ParseUint(hi, 16, 64)
	if err != nil {
		return vma{}, fmt.Errorf("mapping line %q: %w", line, err)
	}
	return vma{
		start: uintptr(start),
		end:   uintptr(end),
		perms: fields[1],
		path:  strings.TrimSpace(rest),
		kB:    make(map[string]uint64),
	}, nil
}

// overlapping returns the mappings that overlap [lo, hi), in address order.
func overlapping(vmas []vma, lo, hi uintptr) []vma {
	var out []vma
	for _, v := range vmas {
		if v.end > lo && v.start < hi {
			out = append(out, v)
		}
	}
	return out
}
