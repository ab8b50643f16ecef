// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
)

// BenchmarkAdvise measures UPM's advise call itself, with advisers
// (processes of this binary, see AdviserEnv) that hold synthetic content, so
// that nothing but the merge is timed:
//
//   - size/backing=B/mib=M: one process advises M MiB (the first: nothing to
//     merge with, UPM indexes its pages), then a second advises the same
//     content (the joiner: every page merges). Cost per page should not
//     depend on M, nor much on the backing (4 KiB pages, or transparent huge
//     pages that UPM must split).
//   - burst/case=C/n=N: N processes advise the same content at the same
//     moment (parallel) and, in the same round, one after the other
//     (serial); case=new is content nobody holds yet, case=warm content a
//     warm instance advised before. The makespan is from the signal to the
//     last call's return.
//
// tlb-ipis/page counts the TLB-shootdown interrupts of all CPUs
// (/proc/interrupts) while the calls ran, per advised page: what the merge's
// page-table changes cost the advisers' other threads' CPUs.
//
// Each sub-benchmark measures once, whatever b.N is; UPM_BENCH_COUNT repeats
// the rounds, in which the burst's two modes alternate which runs first.
// Figures go to b.ReportMetric and to advise.txt in UPM_RESULTS_DIR (for
// benchstat). It needs a kernel with UPM and changes KSM's run to 0 for the
// run (ksmd would otherwise merge the content too): in the test guest only.
func BenchmarkAdvise(b *testing.B) {
	wd, err := os.Getwd()
	if err != nil {
		b.Fatal(err)
	}
	o, err := OptionsFromEnv(wd)
	if err != nil {
		b.Fatal(err)
	}
	if !hasUPM() {
		b.Skip("needs a kernel with UPM (" + upmAdvice + "): make bench-advise boots one")
	}
	if !o.InGuest {
		b.Skip("sets KSM's run to 0 for the run: only in the test guest (make bench-advise)")
	}
	ab, err := adviseBenchFromEnv()
	if err != nil {
		b.Fatal(err)
	}
	saved := saveKSM()
	if err := writeKSM("run", "0"); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := restoreKSM(saved); err != nil {
			b.Errorf("restoring KSM: %v", err)
		}
	}()
	out := &adviseText{path: filepath.Join(o.ResultsDir, "advise.txt")}
	defer func() {
		if err := out.flush(); err != nil {
			b.Errorf("advise.txt: %v", err)
		}
	}()
	hashMBps := xxhashMBps(32 << 20)
	prof, err := newProfiling(filepath.Join(o.ResultsDir, "profile.txt"))
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := prof.flush(); err != nil {
			b.Errorf("profile.txt: %v", err)
		}
	}()

	for round := 1; round <= o.Rounds; round++ {
		for _, thp := range []bool{false, true} {
			for _, mib := range ab.sizes {
				name := fmt.Sprintf("size/backing=%s/mib=%d", backingName(thp), mib)
				b.Run(name, func(b *testing.B) {
					ms := ab.once(name, round, func() (metrics, error) { return measureSize(prof, name, int64(mib)<<20, thp, hashMBps) })
					ms.report(b, out, "BenchmarkAdvise/"+name)
				})
			}
		}
		for _, n := range ab.burstN {
			for _, warm := range []bool{false, true} {
				name := fmt.Sprintf("burst/case=%s/n=%d", caseName(warm), n)
				b.Run(name, func(b *testing.B) {
					ms := ab.once(name, round, func() (metrics, error) {
						return measureBurst(prof, name, n, int64(ab.burstMiB)<<20, warm, round%2 == 0)
					})
					ms.report(b, out, "BenchmarkAdvise/"+name)
				})
			}
		}
	}
}

// adviseBench holds BenchmarkAdvise's settings and what it has measured.
type adviseBench struct {
	// sizes are the size scenario's MiB (UPM_BENCH_ADVISE_MIB).
	sizes []int
	// burstN are the burst's instance counts (UPM_BENCH_BURST_N), each
	// advising burstMiB (UPM_BENCH_BURST_MIB).
	burstN   []int
	burstMiB int
	measured map[string]metrics
}

func adviseBenchFromEnv() (*adviseBench, error) {
	ab := &adviseBench{sizes: []int{32, 128, 512, 1024}, burstN: []int{1, 2, 4, 8, 16}, burstMiB: 32, measured: map[string]metrics{}}
	for _, v := range []struct {
		env string
		dst *[]int
	}{{"UPM_BENCH_ADVISE_MIB", &ab.sizes}, {"UPM_BENCH_BURST_N", &ab.burstN}} {
		if s := os.Getenv(v.env); s != "" {
			xs, err := parseCounts(s)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v.env, err)
			}
			*v.dst = xs
		}
	}
	for _, mib := range ab.sizes {
		if mib%2 != 0 {
			return nil, fmt.Errorf("UPM_BENCH_ADVISE_MIB: %d is not a multiple of 2 MiB", mib)
		}
	}
	if s := os.Getenv("UPM_BENCH_BURST_MIB"); s != "" {
		mib, err := strconv.Atoi(s)
		if err != nil || mib <= 0 || mib%2 != 0 {
			return nil, fmt.Errorf("UPM_BENCH_BURST_MIB=%q: want a positive multiple of 2", s)
		}
		ab.burstMiB = mib
	}
	return ab, nil
}

// once measures name's scenario once a round, even when the testing
// package calls the sub-benchmark again.
func (ab *adviseBench) once(name string, round int, measure func() (metrics, error)) metrics {
	key := fmt.Sprintf("%s#%d", name, round)
	if ms, ok := ab.measured[key]; ok {
		return ms
	}
	ms, err := measure()
	if err != nil {
		ms = metrics{err: err}
	}
	ab.measured[key] = ms
	return ms
}

type metrics struct {
	m   []metric
	err error
}

func (ms metrics) report(b *testing.B, out *adviseText, name string) {
	if ms.err != nil {
		b.Fatal(ms.err)
	}
	for range b.N {
		// One measurement whatever b.N: see BenchmarkAdvise.
	}
	for _, m := range ms.m {
		if !math.IsNaN(m.v) {
			b.ReportMetric(m.v, m.unit)
		}
	}
	out.add(name, ms.m)
}

func backingName(thp bool) string {
	if thp {
		return "thp"
	}
	return "4k"
}

func caseName(warm bool) string {
	if warm {
		return "warm"
	}
	return "new"
}

// seeds gives every measurement content of its own, so that nothing an
// earlier one left behind can merge with it.
var seeds = struct {
	sync.Mutex
	next uint64
}{next: uint64(time.Now().UnixNano())}

func newSeed() uint64 {
	seeds.Lock()
	defer seeds.Unlock()
	seeds.next++
	return seeds.next
}

// measureSize advises size bytes in a first process, then the same content
// in a second one. prof, if on, profiles each of the two calls.
func measureSize(prof *profiling, name string, size int64, thp bool, hashMBps float64) (metrics, error) {
	spec := adviserSpec{Bytes: size, THP: thp, Seed: newSeed()}
	first, err := startAdviser(spec, "upm")
	if err != nil {
		return metrics{}, err
	}
	defer first.stop()
	joiner, err := startAdviser(spec, "upm")
	if err != nil {
		return metrics{}, err
	}
	defer joiner.stop()
	tlbFirst := tlbDelta()
	var rf, rj adviserResult
	err = prof.around(name+", first", first.pages(), func() (err error) { rf, err = first.advise(); return err })
	if err != nil {
		return metrics{}, err
	}
	firstTLB := tlbFirst(float64(first.pages()))
	tlbJoiner := tlbDelta()
	err = prof.around(name+", joiner", joiner.pages(), func() (err error) { rj, err = joiner.advise(); return err })
	if err != nil {
		return metrics{}, err
	}
	joinerTLB := tlbJoiner(float64(joiner.pages()))
	if err := allMerged(first, joiner); err != nil {
		return metrics{}, err
	}
	pages := float64(joiner.pages())
	mbps := float64(size) / 1e6 / rj.Wall.Seconds()
	return metrics{m: []metric{
		{float64(rj.Wall.Nanoseconds()) / pages, "ns/page-joiner"},
		{float64(rj.SysCPU.Nanoseconds()) / pages, "sys-ns/page-joiner"},
		{mbps, "MB/s-joiner"},
		{100 * mbps / hashMBps, "%of-xxhash64-joiner"},
		{float64(rf.Wall.Nanoseconds()) / pages, "ns/page-first"},
		{float64(rf.SysCPU.Nanoseconds()) / pages, "sys-ns/page-first"},
		{joinerTLB, "tlb-ipis/page-joiner"},
		{firstTLB, "tlb-ipis/page-first"},
		{hashMBps, "MB/s-xxhash64-4KiB-pages"},
		{100 * float64(joiner.prepared.HugeBytes) / float64(size), "%in-thp-before"},
	}}, nil
}

// measureBurst advises size bytes of one content in n processes at the same
// moment and, in n other processes, one after the other; with warm, a warm
// instance advised the content before each. parallelFirst says which runs
// first. prof, if on, profiles each of the two.
func measureBurst(prof *profiling, name string, n int, size int64, warm, parallelFirst bool) (metrics, error) {
	modes := []bool{false, true}
	if parallelFirst {
		modes = []bool{true, false}
	}
	res := map[bool]burstResult{}
	for _, parallel := range modes {
		r, err := burstOnce(prof, name, n, size, warm, parallel)
		if err != nil {
			return metrics{}, err
		}
		res[parallel] = r
	}
	par, ser := res[true], res[false]
	return metrics{m: []metric{
		{millis(par.makespan), "ms-makespan-parallel"},
		{millis(ser.makespan), "ms-makespan-serial"},
		{ser.makespan.Seconds() / par.makespan.Seconds(), "x-serial/parallel"},
		{percentile(par.wallMs, 50), "ms-advise-p50-parallel"},
		{percentile(par.wallMs, 99), "ms-advise-p99-parallel"},
		{percentile(ser.wallMs, 50), "ms-advise-p50-serial"},
		{par.sysCPU.Seconds(), "s-advise-sys-cpu-parallel"},
		{ser.sysCPU.Seconds(), "s-advise-sys-cpu-serial"},
		{par.tlbPerPage, "tlb-ipis/page-parallel"},
		{ser.tlbPerPage, "tlb-ipis/page-serial"},
	}}, nil
}

type burstResult struct {
	makespan time.Duration
	wallMs   []float64
	sysCPU   time.Duration
	// tlbPerPage is TLB-shootdown interrupts per advised page, all CPUs.
	tlbPerPage float64
}

func burstOnce(prof *profiling, name string, n int, size int64, warm, parallel bool) (burstResult, error) {
	spec := adviserSpec{Bytes: size, Seed: newSeed()}
	var all []*adviser
	defer func() {
		for _, a := range all {
			a.stop()
		}
	}()
	if warm {
		w, err := startAdviser(spec, "upm")
		if err != nil {
			return burstResult{}, err
		}
		all = append(all, w)
		if _, err := w.advise(); err != nil {
			return burstResult{}, err
		}
	}
	burst := make([]*adviser, n)
	for i := range burst {
		a, err := startAdviser(spec, "upm")
		if err != nil {
			return burstResult{}, err
		}
		all = append(all, a)
		burst[i] = a
	}
	results := make([]adviserResult, n)
	var pages int64
	for _, a := range burst {
		pages += a.pages()
	}
	mode := map[bool]string{false: ", serial", true: ", parallel"}[parallel]
	tlb := tlbDelta()
	start := time.Now()
	err := prof.around(name+mode, pages, func() error {
		if parallel {
			for _, a := range burst {
				if err := a.signal(); err != nil {
					return err
				}
			}
			for i, a := range burst {
				r, err := a.result()
				if err != nil {
					return err
				}
				results[i] = r
			}
			return nil
		}
		for i, a := range burst {
			r, err := a.advise()
			if err != nil {
				return err
			}
			results[i] = r
		}
		return nil
	})
	if err != nil {
		return burstResult{}, err
	}
	var br burstResult
	br.tlbPerPage = tlb(float64(pages))
	for _, r := range results {
		br.makespan = max(br.makespan, r.Returned.Sub(start))
		br.wallMs = append(br.wallMs, millis(r.Wall))
		br.sysCPU += r.SysCPU
	}
	if len(all) > 1 {
		if err := allMerged(all...); err != nil {
			return burstResult{}, err
		}
	}
	return br, nil
}

// allMerged checks that every page of every adviser is merged once the
// last advise call has returned: UPM's promise, which no speed-up may break.
func allMerged(as ...*adviser) error {
	for _, a := range as {
		got, err := mergingPages(a.cmd.Process.Pid)
		if err != nil {
			return err
		}
		if got != a.pages() {
			return fmt.Errorf("adviser %d: %d of its %d pages merged after the last advise returned", a.cmd.Process.Pid, got, a.pages())
		}
	}
	return nil
}

func millis(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// xxhashMBps is the throughput of xxhash64 over size bytes of advisers'
// content, one hash a 4 KiB page, in this process: the practical limit of a
// merge that reads every byte once.
func xxhashMBps(size int) float64 {
	mem := make([]byte, size)
	fillPages(mem, 1)
	var sink uint64
	passes, start := 0, time.Now()
	for passes < 3 || time.Since(start) < time.Second {
		for off := 0; off < len(mem); off += 4096 {
			sink ^= xxhash.Sum64(mem[off : off+4096])
		}
		passes++
	}
	_ = sink
	return float64(passes) * float64(size) / 1e6 / time.Since(start).Seconds()
}

// adviseText collects BenchmarkAdvise's lines for benchstat.
type adviseText struct {
	path  string
	lines []string
}

func (t *adviseText) add(name string, ms []metric) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s 1", name)
	for _, m := range ms {
		if !math.IsNaN(m.v) {
			fmt.Fprintf(&b, " %s %s", strconv.FormatFloat(m.v, 'g', 6, 64), m.unit)
		}
	}
	t.lines = append(t.lines, b.String())
}

func (t *adviseText) flush() error {
	if len(t.lines) == 0 || t.path == "" || filepath.Dir(t.path) == "." {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(t.path), 0o755); err != nil {
		return err
	}
	head := "goos: linux\ngoarch: amd64\npkg: github.com/upm-project/upm/bench\n"
	return os.WriteFile(t.path, []byte(head+strings.Join(t.lines, "\n")+"\n"), 0o644)
}
