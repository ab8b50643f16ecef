// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/google/pprof/profile"
)

// registry holds every live Region, for WriteProfile and ProcessStats.
var registry = struct {
	sync.Mutex
	regions map[*Region]struct{}
}{regions: make(map[*Region]struct{})}

func register(r *Region) {
	registry.Lock()
	defer registry.Unlock()
	registry.regions[r] = struct{}{}
}

func unregister(r *Region) {
	registry.Lock()
	defer registry.Unlock()
	delete(registry.regions, r)
}

// liveRegions returns the live Regions in the order they were advised.
func liveRegions() []*Region {
	registry.Lock()
	rs := make([]*Region, 0, len(registry.regions))
	for r := range registry.regions {
		rs = append(rs, r)
	}
	registry.Unlock()
	slices.SortFunc(rs, func(a, b *Region) int { return cmp.Compare(a.seq, b.seq) })
	return rs
}

// WriteProfile writes a pprof profile of the live Regions to w.
//
// Each Region is one sample with two values, advised/bytes (its Len) and
// merged/bytes (its Merged bytes, a lower bound where Merged is not exact),
// located at the call stack of the Advise, AdviseSlice, AdviseFile or
// Arena.Seal call that created it. The samples carry the labels "backend",
// "kind" (slice, file or arena) and, for AdviseFile, "file". So
//
//	go tool pprof -top upm.pb.gz
//
// names the functions that advised memory, and with -sample_index=merged
// those whose advice saved memory; -tags shows the labels. The profile is
// gzip-compressed protobuf, as runtime/pprof writes.
func WriteProfile(w io.Writer) error {
	p := buildProfile(liveRegions())
	if err := p.Write(w); err != nil {
		return fmt.Errorf("upm: write profile: %w", err)
	}
	return nil
}

func buildProfile(regions []*Region) *profile.Profile {
	p := &profile.Profile{
		SampleType: []*profile.ValueType{
			{Type: "advised", Unit: "bytes"},
			{Type: "merged", Unit: "bytes"},
		},
		DefaultSampleType: "advised",
		PeriodType:        &profile.ValueType{Type: "space", Unit: "bytes"},
		Period:            1,
		TimeNanos:         time.Now().UnixNano(),
	}
	// The locations carry their function names and lines, so pprof needs
	// no binary to symbolise them; the mapping says so.
	exe, _ := os.Executable()
	mapping := &profile.Mapping{
		ID:              1,
		File:            exe,
		HasFunctions:    true,
		HasFilenames:    true,
		HasLineNumbers:  true,
		HasInlineFrames: true,
	}
	p.Mapping = []*profile.Mapping{mapping}

	locations := make(map[uintptr]*profile.Location)
	functions := make(map[string]*profile.Function)
	location := func(pc uintptr) *profile.Location {
		if l, ok := locations[pc]; ok {
			return l
		}
		l := &profile.Location{ID: uint64(len(p.Location) + 1), Mapping: mapping, Address: uint64(pc)}
		// One return address can stand for several frames when calls
		// were inlined; CallersFrames yields them innermost first, as
		// pprof wants them.
		frames := runtime.CallersFrames([]uintptr{pc})
		for {
			frame, more := frames.Next()
			name := frame.Function
			if name == "" {
				name = fmt.Sprintf("%#x", frame.PC)
			}
			fn, ok := functions[name]
			if !ok {
				fn = &profile.Function{
					ID:         uint64(len(p.Function) + 1),
					Name:       name,
					SystemName: name,
					Filename:   frame.File,
				}
				functions[name] = fn
				p.Function = append(p.Function, fn)
			}
			l.Line = append(l.Line, profile.Line{Function: fn, Line: int64(frame.Line)})
			if !more {
				break
			}
		}
		locations[pc] = l
		p.Location = append(p.Location, l)
		return l
	}

	var smaps smapsCache
	for _, r := range regions {
		r.mu.Lock()
		mem := r.mem
		r.mu.Unlock()
		if mem == nil {
			continue
		}
		merged, _, err := mergedBytes(mem, &smaps)
		if err != nil {
			merged = 0
		}
		s := &profile.Sample{
			Value: []int64{int64(r.size), merged},
			Label: map[string][]string{
				"backend": {r.backend.String()},
				"kind":    {r.kind},
			},
		}
		if r.label != "" {
			s.Label["file"] = []string{r.label}
		}
		for _, pc := range r.stack {
			s.Location = append(s.Location, location(pc))
		}
		p.Sample = append(p.Sample, s)
	}
	return p
}
