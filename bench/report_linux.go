// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"encoding/csv"
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

const mib = 1 << 20

// Figures are the derived figures of one Result, as reported. Times are in
// seconds or milliseconds as their names say; NaN means "does not apply".
type Figures struct {
	Config   string
	N, Round int
	// CgroupMiB is the sum of the instances' memory.current at the end:
	// what an operator pays for (0 outside the guest). PSSMiB is the sum
	// of their PSS, and UsedMiB the growth of the machine's used memory
	// since before the instances started.
	CgroupMiB, PSSMiB, UsedMiB float64
	// SavedPct is the saving in memory.current (PSS outside the guest)
	// against the configuration's baseline at the same N and round, and
	// SavedPSSPct the same in PSS.
	SavedPct, SavedPSSPct float64
	// MarginalMiB is what one more instance costs, measured:
	// (mem(N) - mem(1)) / (N - 1) in the same round, NaN at N = 1.
	// Density extrapolates it linearly to the instances that fit in
	// Options.Budget: an extrapolation, labelled as one.
	MarginalMiB, Density float64
	// StartToMergedP50S and StartToMergedMaxS are the median and the
	// longest time from an instance's start to its memory being merged
	// (95% of its final KSM pages); MergedInstances is how many had
	// anything merged.
	StartToMergedP50S, StartToMergedMaxS float64
	MergedInstances                      int
	// AfterReadyS is the time from the last instance being ready to the
	// instances' memory being within 5% of its final saving (NaN when
	// nothing was saved); Capped says the KSM wait hit its cap, after
	// WaitS.
	AfterReadyS float64
	Capped      bool
	WaitS       float64
	// ReadyP50S is the median time from an instance's start to its ready
	// line.
	ReadyP50S float64
	// AdviseP50Ms and AdviseP99Ms are the median and 99th percentile of
	// the instances' advise calls: the cost each backend puts on the cold
	// start. AdviseSysS is their system CPU time, summed: where UPM
	// merges.
	AdviseP50Ms, AdviseP99Ms, AdviseSysS float64
	// KSMDCPUS is ksmd's CPU time until merging converged, and
	// KSMDSteady its CPU seconds per second after that.
	KSMDCPUS, KSMDSteady float64
	// UPMMBps is, for UPM only, the bytes advised per second of the
	// median advise call: its merge throughput (MB = 10^6). NaN for the
	// other backends, whose advise call merges nothing.
	UPMMBps float64
	// RequestP50Ms and RequestMaxMs are the first request's wall time.
	RequestP50Ms, RequestMaxMs float64
	AdvisedMiB                 float64
	Isolation                  string
}

// Report collects the results of a run.
type Report struct {
	Opts    Options
	Configs []Config
	Results []*Result
	// HashMBps is the user-space hashing throughput over the model's
	// decoded weights, by hash, from the Hash benchmarks.
	HashMBps  map[string]float64
	ModelSize int64
	Skipped   []string
}

// find returns the result of config with n instances in round, or nil.
func (rep *Report) find(config string, n, round int) *Result {
	for _, r := range rep.Results {
		if r.Config == config && r.N == n && r.Round == round {
			return r
		}
	}
	return nil
}

func (rep *Report) baseline(config string) string {
	for _, c := range rep.Configs {
		if c.Name == config && c.Baseline != "" {
			return c.Baseline
		}
	}
	return "none"
}

// memory is the headline memory figure of a sample: memory.current where the
// instances have cgroups, else PSS.
func memory(s Sample) int64 {
	if s.CgroupMem > 0 {
		return s.CgroupMem
	}
	return s.PSS
}

// percentile returns the nearest-rank p-th percentile of xs (NaN if empty).
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

// median returns the median of xs (NaN if empty): the mean of the middle two
// of an even count.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Figures derives the figures of r.
func (rep *Report) Figures(r *Result) Figures {
	f := Figures{
		Config:      r.Config,
		N:           r.N,
		Round:       r.Round,
		PSSMiB:      float64(r.Final.PSS) / mib,
		UsedMiB:     float64(r.Final.Used-r.UsedBefore) / mib,
		CgroupMiB:   float64(r.Final.CgroupMem) / mib,
		SavedPct:    math.NaN(),
		SavedPSSPct: math.NaN(),
		MarginalMiB: math.NaN(),
		Density:     math.NaN(),
		AfterReadyS: math.NaN(),
		Capped:      r.DedupCapped,
		WaitS:       r.Waited.Seconds(),
		KSMDCPUS:    r.KSMDCPU.Seconds(),
		KSMDSteady:  r.KSMDSteady,
		UPMMBps:     math.NaN(),
		Isolation:   r.Isolation,
	}
	base := rep.find(rep.baseline(r.Config), r.N, r.Round)
	var baseMem int64
	if base != nil && memory(base.Final) > 0 {
		baseMem = memory(base.Final)
		f.SavedPct = 100 * float64(baseMem-memory(r.Final)) / float64(baseMem)
		if base.Final.PSS > 0 {
			f.SavedPSSPct = 100 * float64(base.Final.PSS-r.Final.PSS) / float64(base.Final.PSS)
		}
	}
	r.ComputeDedup(baseMem)
	if r.DedupOK {
		f.AfterReadyS = r.DedupTime.Seconds()
	}
	if one := rep.find(r.Config, 1, r.Round); one != nil && r.N > 1 {
		f.MarginalMiB = float64(memory(r.Final)-memory(one.Final)) / float64(r.N-1) / mib
		if f.MarginalMiB > 0 {
			f.Density = 1 + (float64(rep.Opts.Budget)-float64(memory(one.Final)))/mib/f.MarginalMiB
		}
	}
	var merged, advise, ready, request []float64
	for _, in := range r.Instances {
		if in.Merged >= 0 {
			merged = append(merged, (in.Merged - in.Start).Seconds())
		}
		advise = append(advise, ms(in.Load.AdviseTime))
		ready = append(ready, (in.Ready - in.Start).Seconds())
		if in.Request > 0 {
			request = append(request, ms(in.Request))
		}
		f.AdviseSysS += in.Load.AdviseSysTime.Seconds()
		f.AdvisedMiB = float64(in.Load.AdvisedBytes) / mib
	}
	f.MergedInstances = len(merged)
	f.StartToMergedP50S = percentile(merged, 50)
	f.StartToMergedMaxS = percentile(merged, 100)
	f.ReadyP50S = percentile(ready, 50)
	f.AdviseP50Ms = percentile(advise, 50)
	f.AdviseP99Ms = percentile(advise, 99)
	f.RequestP50Ms = percentile(request, 50)
	f.RequestMaxMs = percentile(request, 100)
	if len(r.Instances) > 0 && r.Instances[0].Load.Backend == "upm" && f.AdviseP50Ms > 0 {
		f.UPMMBps = f.AdvisedMiB * mib / 1e6 / (f.AdviseP50Ms / 1000)
	}
	return f
}

// metrics are the figures of f as b.ReportMetric and bench.txt report them:
// the unit names say what each measures.
func (f Figures) metrics() []metric {
	m := []metric{
		{f.CgroupMiB, "MiB-memory.current"},
		{f.PSSMiB, "MiB-pss"},
		{f.UsedMiB, "MiB-machine-used"},
		{f.SavedPct, "%saved"},
		{f.StartToMergedP50S, "s-start-to-merged-p50"},
		{f.StartToMergedMaxS, "s-start-to-merged-max"},
		{f.AfterReadyS, "s-merged-after-last-ready"},
		{f.AdviseP50Ms, "ms-advise-p50"},
		{f.AdviseP99Ms, "ms-advise-p99"},
		{f.AdviseSysS, "s-advise-sys-cpu"},
		{f.KSMDCPUS, "s-ksmd-cpu-to-converge"},
		{f.KSMDSteady, "ksmd-cpu-s/s-steady"},
		{f.UPMMBps, "MB/s-upm-advise"},
		{f.RequestP50Ms, "ms-first-request-p50"},
	}
	return slices.DeleteFunc(m, func(x metric) bool { return math.IsNaN(x.v) })
}

type metric struct {
	v    float64
	unit string
}

// Write writes results.md, results.csv, samples.csv, instances.csv,
// bench.txt (for benchstat) and the plots into dir.
func (rep *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	figs := make([]Figures, len(rep.Results))
	for i, r := range rep.Results {
		figs[i] = rep.Figures(r)
	}
	return errors.Join(
		rep.writeMarkdown(filepath.Join(dir, "results.md"), figs),
		rep.writeCSV(filepath.Join(dir, "results.csv"), figs),
		rep.writeBenchText(filepath.Join(dir, "bench.txt"), figs),
		rep.writeSamples(filepath.Join(dir, "samples.csv")),
		rep.writeInstances(filepath.Join(dir, "instances.csv")),
		rep.plotMemory(dir, figs),
		rep.plotOverTime(dir),
	)
}

func num(v float64, prec int) string {
	if math.IsNaN(v) {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', prec, 64)
}

// groups returns the figures by configuration and N, in run order.
func groups(figs []Figures) [][]Figures {
	var out [][]Figures
	for _, f := range figs {
		i := slices.IndexFunc(out, func(g []Figures) bool { return g[0].Config == f.Config && g[0].N == f.N })
		if i < 0 {
			out = append(out, []Figures{f})
		} else {
			out[i] = append(out[i], f)
		}
	}
	slices.SortStableFunc(out, func(a, b []Figures) int { return a[0].N - b[0].N })
	return out
}

// med returns the median of get over g, with its range when g has more
// than one figure.
func med(g []Figures, prec int, get func(Figures) float64) string {
	var xs []float64
	for _, f := range g {
		if v := get(f); !math.IsNaN(v) {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 {
		return "-"
	}
	m := median(xs)
	if len(xs) == 1 {
		return num(m, prec)
	}
	return fmt.Sprintf("%s (%s–%s)", num(m, prec), num(slices.Min(xs), prec), num(slices.Max(xs), prec))
}

func (rep *Report) writeMarkdown(path string, figs []Figures) error {
	var b strings.Builder
	o := rep.Opts
	rounds := 0
	for _, f := range figs {
		rounds = max(rounds, f.Round)
	}
	fmt.Fprintf(&b, "# Density of the imageclass function\n\n")
	fmt.Fprintf(&b, "Generated %s by `UPM_BENCH_COUNT=%d go test -bench Density -benchtime 1x ./bench` (in guest: %t).\n\n", time.Now().UTC().Format(time.RFC3339), rounds, o.InGuest)
	fmt.Fprintf(&b, "Each instance is the `imageclass` command (its HTTP server, default GOMAXPROCS) and decodes %.1f MiB of face-model weights, advised when the backend merges. ", float64(rep.ModelSize)/mib)
	fmt.Fprintf(&b, "%d rounds, configurations interleaved within each round; figures are medians with (min–max) over the rounds. KSM wait cap %v, ksmd steady window %v, memory sampled every %v, merged pages every %v.\n\n", rounds, o.KSMWait, o.Steady, o.Sample, max(o.Sample/5, 10*time.Millisecond))
	if len(figs) > 0 {
		fmt.Fprintf(&b, "Instances: %s.\n\n", figs[0].Isolation)
	}
	b.WriteString("## Memory at the end (instances ready and idle)\n\n")
	b.WriteString("| config | N | memory.current MiB | saved (memory.current) | PSS MiB | saved (PSS) | machine used MiB | MiB per extra instance (measured) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	gs := groups(figs)
	for _, g := range gs {
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s |\n", g[0].Config, g[0].N,
			med(g, 1, func(f Figures) float64 { return f.CgroupMiB }),
			pct(med(g, 1, func(f Figures) float64 { return f.SavedPct })),
			med(g, 1, func(f Figures) float64 { return f.PSSMiB }),
			pct(med(g, 1, func(f Figures) float64 { return f.SavedPSSPct })),
			med(g, 1, func(f Figures) float64 { return f.UsedMiB }),
			med(g, 2, func(f Figures) float64 { return f.MarginalMiB }))
	}
	b.WriteString("\n## Time and CPU\n\n")
	b.WriteString("| config | N | start → merged s, p50 | start → merged s, max | merged s after last ready | start → ready s, p50 | advise ms, p50 | advise ms, p99 | advise sys CPU s (sum) | ksmd CPU s to converge | ksmd CPU s/s, steady | UPM advise MB/s | first request ms, p50 |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, g := range gs {
		after := med(g, 2, func(f Figures) float64 { return f.AfterReadyS })
		for _, f := range g {
			if f.Capped {
				after = fmt.Sprintf("> %s (cap hit)", num(f.WaitS, 0))
				break
			}
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", g[0].Config, g[0].N,
			med(g, 2, func(f Figures) float64 { return f.StartToMergedP50S }),
			med(g, 2, func(f Figures) float64 { return f.StartToMergedMaxS }),
			after,
			med(g, 2, func(f Figures) float64 { return f.ReadyP50S }),
			med(g, 1, func(f Figures) float64 { return f.AdviseP50Ms }),
			med(g, 1, func(f Figures) float64 { return f.AdviseP99Ms }),
			med(g, 3, func(f Figures) float64 { return f.AdviseSysS }),
			med(g, 2, func(f Figures) float64 { return f.KSMDCPUS }),
			med(g, 3, func(f Figures) float64 { return f.KSMDSteady }),
			med(g, 0, func(f Figures) float64 { return f.UPMMBps }),
			med(g, 0, func(f Figures) float64 { return f.RequestP50Ms }))
	}
	b.WriteString("\n## Extrapolated density\n\n")
	fmt.Fprintf(&b, "Instances that would fit in %d MiB of memory.current, extrapolated linearly from the measured cost of one instance (N = 1) and of each extra one (at the N shown): **an extrapolation, not a measurement**; the measured points are the tables above.\n\n", o.Budget/mib)
	b.WriteString("| config | from N | extrapolated instances |\n|---|---|---|\n")
	for _, g := range gs {
		if g[0].N > 1 {
			fmt.Fprintf(&b, "| %s | %d | %s |\n", g[0].Config, g[0].N, med(g, 0, func(f Figures) float64 { return f.Density }))
		}
	}
	if len(rep.HashMBps) > 0 {
		b.WriteString("\nUser-space hashing of the same decoded weights in the same machine (the practical limit of a merge that reads every byte once):\n\n")
		keys := make([]string, 0, len(rep.HashMBps))
		for k := range rep.HashMBps {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "- %s: %.0f MB/s\n", k, rep.HashMBps[k])
		}
	}
	if len(rep.Skipped) > 0 {
		b.WriteString("\nSkipped:\n\n")
		for _, s := range rep.Skipped {
			fmt.Fprintf(&b, "- %s\n", s)
		}
	}
	b.WriteString("\nPlots: memory_vs_instances.svg/.png, memory_over_time.svg/.png. Raw data: results.csv (every round), samples.csv (every sample), instances.csv (every instance), bench.txt (for benchstat).\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func pct(s string) string {
	if s == "-" {
		return s
	}
	if i := strings.Index(s, " "); i >= 0 {
		return s[:i] + "%" + s[i:]
	}
	return s + "%"
}

func (rep *Report) writeCSV(path string, figs []Figures) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"config", "n", "round", "memory_current_mib", "pss_mib", "machine_used_mib", "saved_pct", "saved_pss_pct",
		"marginal_mib", "density_extrapolated", "start_to_merged_p50_s", "start_to_merged_max_s", "merged_instances",
		"merged_after_last_ready_s", "ksm_wait_capped", "waited_s", "start_to_ready_p50_s", "advise_p50_ms", "advise_p99_ms",
		"advise_sys_s", "ksmd_cpu_to_converge_s", "ksmd_cpu_steady_s_per_s", "upm_advise_mbps", "first_request_p50_ms",
		"first_request_max_ms", "advised_mib_per_instance"})
	for _, g := range figs {
		_ = w.Write([]string{g.Config, strconv.Itoa(g.N), strconv.Itoa(g.Round), num(g.CgroupMiB, 2), num(g.PSSMiB, 2),
			num(g.UsedMiB, 2), num(g.SavedPct, 2), num(g.SavedPSSPct, 2), num(g.MarginalMiB, 3), num(g.Density, 1),
			num(g.StartToMergedP50S, 3), num(g.StartToMergedMaxS, 3), strconv.Itoa(g.MergedInstances),
			num(g.AfterReadyS, 3), strconv.FormatBool(g.Capped), num(g.WaitS, 2), num(g.ReadyP50S, 3),
			num(g.AdviseP50Ms, 3), num(g.AdviseP99Ms, 3), num(g.AdviseSysS, 4), num(g.KSMDCPUS, 3), num(g.KSMDSteady, 4),
			num(g.UPMMBps, 1), num(g.RequestP50Ms, 1), num(g.RequestMaxMs, 1), num(g.AdvisedMiB, 2)})
	}
	w.Flush()
	return errors.Join(w.Error(), f.Close())
}

// writeBenchText writes the figures in the Go benchmark format, one line per
// measurement, for benchstat (make bench runs it).
func (rep *Report) writeBenchText(path string, figs []Figures) error {
	var b strings.Builder
	b.WriteString("goos: linux\ngoarch: amd64\npkg: github.com/upm-project/upm/bench\n")
	for _, f := range figs {
		fmt.Fprintf(&b, "BenchmarkDensity/config=%s/n=%d 1", f.Config, f.N)
		for _, m := range f.metrics() {
			fmt.Fprintf(&b, " %s %s", strconv.FormatFloat(m.v, 'g', 6, 64), m.unit)
		}
		b.WriteString("\n")
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func (rep *Report) writeSamples(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"config", "n", "round", "t_s", "after_ready", "pss_mib", "memory_current_mib", "machine_used_mib", "pages_sharing"})
	for _, r := range rep.Results {
		for _, s := range r.Samples {
			_ = w.Write([]string{r.Config, strconv.Itoa(r.N), strconv.Itoa(r.Round), num(s.T.Seconds(), 3), strconv.FormatBool(s.T >= r.Ready),
				num(float64(s.PSS)/mib, 2), num(float64(s.CgroupMem)/mib, 2), num(float64(s.Used)/mib, 2),
				strconv.FormatInt(s.PagesSharing, 10)})
		}
	}
	w.Flush()
	return errors.Join(w.Error(), f.Close())
}

func (rep *Report) writeInstances(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"config", "n", "round", "instance", "backend", "weights", "pss_mib", "memory_current_mib", "advised_mib",
		"merging_pages", "start_s", "ready_s", "merged_s", "load_ms", "advise_ms", "advise_sys_ms", "first_request_ms"})
	s := func(d time.Duration) string {
		if d < 0 {
			return "-"
		}
		return num(d.Seconds(), 3)
	}
	for _, r := range rep.Results {
		for _, in := range r.Instances {
			_ = w.Write([]string{r.Config, strconv.Itoa(r.N), strconv.Itoa(r.Round), in.Name, in.Load.Backend, string(in.Load.Weights),
				num(float64(in.PSS)/mib, 2), num(float64(in.CgroupMem)/mib, 2), num(float64(in.Load.AdvisedBytes)/mib, 2),
				strconv.FormatInt(in.MergingPages, 10), s(in.Start), s(in.Ready), s(in.Merged),
				num(ms(in.Load.LoadTime), 3), num(ms(in.Load.AdviseTime), 3), num(ms(in.Load.AdviseSysTime), 3), num(ms(in.Request), 1)})
		}
	}
	w.Flush()
	return errors.Join(w.Error(), f.Close())
}

// configs returns the configurations of the results, in run order.
func (rep *Report) configs() []string {
	var cs []string
	for _, r := range rep.Results {
		if !slices.Contains(cs, r.Config) {
			cs = append(cs, r.Config)
		}
	}
	return cs
}

func savePlot(p *plot.Plot, dir, name string) error {
	var errs []error
	for _, ext := range []string{".svg", ".png"} {
		errs = append(errs, p.Save(7*vg.Inch, 4.5*vg.Inch, filepath.Join(dir, name+ext)))
	}
	return errors.Join(errs...)
}

func memoryLabel(figs []Figures) string {
	for _, f := range figs {
		if f.CgroupMiB > 0 {
			return "memory.current, sum (MiB)"
		}
	}
	return "total PSS (MiB)"
}

func (rep *Report) plotMemory(dir string, figs []Figures) error {
	p := plot.New()
	p.Title.Text = "Memory of N imageclass instances (median of rounds)"
	p.X.Label.Text = "instances"
	p.Y.Label.Text = memoryLabel(figs)
	p.Legend.Top, p.Legend.Left = true, true
	p.Y.Min = 0
	gs := groups(figs)
	for i, c := range rep.configs() {
		var pts plotter.XYs
		for _, g := range gs {
			if g[0].Config != c {
				continue
			}
			var xs []float64
			for _, f := range g {
				xs = append(xs, float64(memory(Sample{CgroupMem: int64(f.CgroupMiB * mib), PSS: int64(f.PSSMiB * mib)}))/mib)
			}
			pts = append(pts, plotter.XY{X: float64(g[0].N), Y: median(xs)})
		}
		if err := addLine(p, i, c, pts); err != nil {
			return err
		}
	}
	return savePlot(p, dir, "memory_vs_instances")
}

func (rep *Report) plotOverTime(dir string) error {
	maxN := 0
	for _, r := range rep.Results {
		maxN = max(maxN, r.N)
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Memory of %d instances after the first start (round 1)", maxN)
	p.X.Label.Text = "seconds after the first instance started"
	p.Y.Label.Text = "memory.current, sum (MiB); PSS outside the guest"
	p.Legend.Top = true
	p.Y.Min = 0
	for i, c := range rep.configs() {
		r := rep.find(c, maxN, 1)
		if r == nil {
			continue
		}
		pts := make(plotter.XYs, len(r.Samples))
		for j, s := range r.Samples {
			pts[j] = plotter.XY{X: s.T.Seconds(), Y: float64(memory(s)) / mib}
		}
		if err := addLine(p, i, c, pts); err != nil {
			return err
		}
	}
	return savePlot(p, dir, "memory_over_time")
}

func addLine(p *plot.Plot, i int, name string, pts plotter.XYs) error {
	if len(pts) == 0 {
		return nil
	}
	l, s, err := plotter.NewLinePoints(pts)
	if err != nil {
		return err
	}
	c := plotutil.Color(i)
	l.Color = c
	l.Dashes = plotutil.Dashes(i)
	s.Color = c
	s.Shape = plotutil.Shape(i)
	s.Radius = vg.Points(2)
	if len(pts) > 40 {
		s.Color = color.Transparent
	}
	p.Add(l, s)
	p.Legend.Add(name, l, s)
	return nil
}
