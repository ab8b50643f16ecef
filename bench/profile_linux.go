// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// EnvProfile turns the kernel's function profiler on for BenchmarkAdvise
// (make bench-profile, which boots a kernel built with it).
const EnvProfile = "UPM_BENCH_PROFILE"

// tracefsDir is where the guest mounts tracefs if nobody has.
const tracefsDir = "/sys/kernel/tracing"

// profiledFunctions are the functions of UPM's merge path whose time the
// profile attributes: the call itself, its phases, KSM's merge primitives
// it reuses, and what it waits for. Times are inclusive (a function's
// callees and the time it slept count in it), so the rows overlap: read
// each against upm_merge_range. A static function the compiler inlined has
// no row (the profile says which).
var profiledFunctions = []string{
	"upm_merge_range",
	"mutex_lock_killable", // ksm_thread_mutex, once a batch that joined nothing early: the wait for other advisers
	"mutex_lock",          // every caller; in an advise, ksm_thread_mutex once a batch that joined early, and for the deferred merges' accounting
	"lru_add_drain_all",
	"upm_gather", // walk, references, hash: under the mmap_lock only
	"folio_walk_start",
	"upm_page_hash",
	"xxh64",
	"upm_join_early",        // joining the KSM pages the index has, before the mutex
	"upm_stable_peek",       // the index read under its domain's spinlock
	"upm_attach_rmap_items", // under the mutex
	"upm_account_locked",    // the joins' rmap_items on their nodes, under it
	"upm_drop_early",        // early joins undone
	"find_mergeable_vma",
	"upm_get_rmap_item",
	"upm_merge_page",
	"upm_stable_probe",
	"upm_map_deferred",     // joining a KSM page, without the mutex
	"upm_account_deferred", // a join the mutex found: its rmap_item on the node, under it again
	"upm_present_page",
	"remove_rmap_item_from_tree",
	"stable_tree_search",
	"memcmp_pages",
	"calc_checksum",
	"try_to_merge_with_ksm_page",
	"try_to_merge_two_pages",
	"try_to_merge_one_page",
	"write_protect_page",
	"replace_page",
	"flush_tlb_mm_range",
	"stable_tree_append",
	"stable_tree_insert",
	"upm_join_candidates",
	"upm_index_resize",
	"split_huge_page_to_list_to_order",
}

// functionProfile is the kernel's function profiler
// (/sys/kernel/tracing/function_profile_enabled) limited to
// profiledFunctions.
type functionProfile struct {
	dir string
	// untraceable are the profiledFunctions the kernel cannot trace.
	untraceable []string
}

// functionTime is one function's row of a profile, summed over CPUs.
type functionTime struct {
	name  string
	calls int64
	ns    float64
}

// openFunctionProfile sets the profiler up, or returns nil if EnvProfile is
// not set. It mounts tracefs if needed and fails if the kernel has no
// function profiler: a profile asked for is not silently left out.
func openFunctionProfile() (*functionProfile, error) {
	if os.Getenv(EnvProfile) == "" {
		return nil, nil
	}
	p := &functionProfile{dir: tracefsDir}
	enabled := filepath.Join(p.dir, "function_profile_enabled")
	if _, err := os.Stat(enabled); errors.Is(err, fs.ErrNotExist) {
		if err := unix.Mount("tracefs", p.dir, "tracefs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("%s: mount tracefs on %s: %w", EnvProfile, p.dir, err)
		}
	}
	if _, err := os.Stat(enabled); err != nil {
		return nil, fmt.Errorf("%s: the kernel has no function profiler (CONFIG_FUNCTION_PROFILER; make bench-profile builds one): %w", EnvProfile, err)
	}
	if err := p.write("function_profile_enabled", "0"); err != nil {
		return nil, err
	}
	// Inclusive times, sleeping included: mutex_lock_killable's row is
	// then the time spent waiting for the mutex.
	for _, opt := range []string{"options/graph-time", "options/sleep-time"} {
		if err := p.write(opt, "1"); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(p.dir, "set_ftrace_filter"), nil, 0); err != nil {
		return nil, fmt.Errorf("clear set_ftrace_filter: %w", err)
	}
	for _, fn := range profiledFunctions {
		f, err := os.OpenFile(filepath.Join(p.dir, "set_ftrace_filter"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return nil, err
		}
		_, err = f.WriteString(fn + "\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if errors.Is(err, unix.EINVAL) {
			p.untraceable = append(p.untraceable, fn)
		} else if err != nil {
			return nil, fmt.Errorf("set_ftrace_filter %s: %w", fn, err)
		}
	}
	if len(p.untraceable) == len(profiledFunctions) {
		return nil, errors.New("the kernel can trace none of the profiled functions")
	}
	return p, nil
}

func (p *functionProfile) write(file, value string) error {
	if err := os.WriteFile(filepath.Join(p.dir, file), []byte(value), 0); err != nil {
		return fmt.Errorf("function profiler: %s: %w", file, err)
	}
	return nil
}

// start clears the profile and starts profiling.
func (p *functionProfile) start() error {
	// Turning it on again resets every counter.
	if err := p.write("function_profile_enabled", "0"); err != nil {
		return err
	}
	return p.write("function_profile_enabled", "1")
}

// stop stops profiling and returns what it measured since start, in the
// order of profiledFunctions.
func (p *functionProfile) stop() ([]functionTime, error) {
	if err := p.write("function_profile_enabled", "0"); err != nil {
		return nil, err
	}
	stats, err := filepath.Glob(filepath.Join(p.dir, "trace_stat", "function[0-9]*"))
	if err != nil {
		return nil, err
	}
	byName := map[string]*functionTime{}
	for _, path := range stats {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		rows, err := parseFunctionStat(bufio.NewScanner(f))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for _, r := range rows {
			name := fullFunctionName(r.name)
			t := byName[name]
			if t == nil {
				t = &functionTime{name: name}
				byName[name] = t
			}
			t.calls += r.calls
			t.ns += r.ns
		}
	}
	var out []functionTime
	for _, fn := range profiledFunctions {
		if t := byName[fn]; t != nil {
			out = append(out, *t)
		}
	}
	return out, nil
}

// fullFunctionName undoes trace_stat's cut of names to 30 characters.
func fullFunctionName(name string) string {
	for _, fn := range profiledFunctions {
		if len(name) == 30 && strings.HasPrefix(fn, name) {
			return fn
		}
	}
	return name
}

// parseFunctionStat reads one CPU's trace_stat/functionN:
//
//	Function                               Hit    Time            Avg             s^2
//	--------                               ---    ----            ---             ---
//	upm_merge_range                          1    3211.234 us     3211.234 us     0.000 us
func parseFunctionStat(sc *bufio.Scanner) ([]functionTime, error) {
	var rows []functionTime
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[0] == "Function" || strings.HasPrefix(f[0], "---") {
			continue
		}
		calls, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("hits %q: %w", f[1], err)
		}
		v, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			return nil, fmt.Errorf("time %q: %w", f[2], err)
		}
		scale, ok := map[string]float64{"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[f[3]]
		if !ok {
			return nil, fmt.Errorf("time unit %q", f[3])
		}
		rows = append(rows, functionTime{name: f[0], calls: calls, ns: v * scale})
	}
	return rows, sc.Err()
}

// profileText collects the profiles of a run for profile.txt.
type profileText struct {
	path string
	b    strings.Builder
}

// add writes one profile: each function's calls, total time, time per
// call, time per advised page, and its share of upm_merge_range's time.
func (t *profileText) add(label string, pages int64, rows []functionTime, untraceable []string) {
	var total float64
	for _, r := range rows {
		if r.name == "upm_merge_range" {
			total = r.ns
		}
	}
	fmt.Fprintf(&t.b, "## %s: %d pages advised\n\n", label, pages)
	fmt.Fprintf(&t.b, "| function | calls | ms total | us/call | ns/page | %% of upm_merge_range |\n|---|---|---|---|---|---|\n")
	sorted := append([]functionTime(nil), rows...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].ns > sorted[j].ns })
	for _, r := range sorted {
		share := "-"
		if total > 0 {
			share = strconv.FormatFloat(100*r.ns/total, 'f', 1, 64)
		}
		fmt.Fprintf(&t.b, "| %s | %d | %.1f | %.2f | %.0f | %s |\n", r.name, r.calls, r.ns/1e6,
			r.ns/1e3/float64(max(r.calls, 1)), r.ns/float64(max(pages, 1)), share)
	}
	if len(untraceable) > 0 {
		fmt.Fprintf(&t.b, "\nNot traceable (inlined or static): %s\n", strings.Join(untraceable, ", "))
	}
	t.b.WriteString("\n")
}

func (t *profileText) flush() error {
	if t.b.Len() == 0 {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(t.path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(t.path, []byte(t.b.String()), 0o644)
}

// profiling is BenchmarkAdvise's profile, if one is on: nil does nothing.
type profiling struct {
	p   *functionProfile
	out *profileText
}

// around runs advise, which advises pages pages, under the profile and adds
// what it measured under label.
func (pr *profiling) around(label string, pages int64, advise func() error) error {
	if pr == nil {
		return advise()
	}
	if err := pr.p.start(); err != nil {
		return err
	}
	err := advise()
	rows, perr := pr.p.stop()
	if err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	pr.out.add(label, pages, rows, pr.p.untraceable)
	return nil
}

// newProfiling opens the function profile if EnvProfile asks for one, to
// be written to path; nil if not.
func newProfiling(path string) (*profiling, error) {
	p, err := openFunctionProfile()
	if err != nil || p == nil {
		return nil, err
	}
	return &profiling{p: p, out: &profileText{path: path}}, nil
}

func (pr *profiling) flush() error {
	if pr == nil {
		return nil
	}
	return pr.out.flush()
}
