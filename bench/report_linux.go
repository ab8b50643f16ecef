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

// Figures are the derived figures of one Result, as reported.
type Figures struct {
	Config string
	N      int
	// PSSMiB is the instances' total PSS at the end, UsedMiB the growth
	// of the machine's used memory, CgroupMiB the sum of memory.current.
	PSSMiB, UsedMiB, CgroupMiB float64
	// SavedPct is the saving in total PSS against "none" at the same N
	// (NaN without it).
	SavedPct float64
	// MarginalMiB is the memory one more instance costs, and Density the
	// instances that fit in Options.Budget.
	MarginalMiB, Density float64
	// DedupS is the time to deduplicate, in seconds (NaN when nothing was
	// saved); Capped says the KSM wait hit its cap.
	DedupS float64
	Capped bool
	WaitS  float64
	// KSMDCPUS is ksmd's CPU time and AdviseSysS the instances' system
	// time in their advise calls, in seconds.
	KSMDCPUS, AdviseSysS float64
	// AdviseMs and AdviseMaxMs are the mean and longest advise call, and
	// MergeMBps the bytes advised per second of advise call (MB = 10^6).
	AdviseMs, AdviseMaxMs, MergeMBps float64
	AdvisedMiB                       float64
	ReadyS                           float64
	Isolation                        string
}

// Report collects the results of a run.
type Report struct {
	Opts    Options
	Results []*Result
	// HashMBps is the user-space hashing throughput over the model's
	// decoded weights, by hash, from the Hash benchmarks.
	HashMBps  map[string]float64
	ModelSize int64
	Skipped   []string
}

// find returns the result of config with n instances, or nil.
func (rep *Report) find(config string, n int) *Result {
	for _, r := range rep.Results {
		if r.Config == config && r.N == n {
			return r
		}
	}
	return nil
}

// Figures derives the figures of r.
func (rep *Report) Figures(r *Result) Figures {
	f := Figures{
		Config:     r.Config,
		N:          r.N,
		PSSMiB:     float64(r.Final.PSS) / mib,
		UsedMiB:    float64(r.Final.Used-r.UsedBefore) / mib,
		CgroupMiB:  float64(r.Final.CgroupMem) / mib,
		SavedPct:   math.NaN(),
		DedupS:     math.NaN(),
		Capped:     r.DedupCapped,
		WaitS:      r.Waited.Seconds(),
		KSMDCPUS:   r.KSMDCPU.Seconds(),
		AdviseSysS: r.AdviseSys.Seconds(),
		AdvisedMiB: float64(r.Advised) / mib,
		ReadyS:     r.Ready.Seconds(),
		Isolation:  r.Isolation,
	}
	none := rep.find("none", r.N)
	if none != nil && none.Final.PSS > 0 {
		f.SavedPct = 100 * float64(none.Final.PSS-r.Final.PSS) / float64(none.Final.PSS)
	}
	var base int64
	if none != nil {
		base = none.Final.PSS
	}
	r.ComputeDedup(base)
	if r.DedupOK {
		f.DedupS = r.DedupTime.Seconds()
	}
	if one := rep.find(r.Config, 1); one != nil && r.N > 1 {
		f.MarginalMiB = float64(r.Final.PSS-one.Final.PSS) / float64(r.N-1) / mib
		if f.MarginalMiB > 0 {
			f.Density = 1 + (float64(rep.Opts.Budget)/mib-float64(one.Final.PSS)/mib)/f.MarginalMiB
		}
	} else {
		f.MarginalMiB = f.PSSMiB / float64(r.N)
		if f.MarginalMiB > 0 {
			f.Density = float64(rep.Opts.Budget) / mib / f.MarginalMiB
		}
	}
	var sum, longest time.Duration
	for _, d := range r.AdviseTimes {
		sum += d
		longest = max(longest, d)
	}
	if len(r.AdviseTimes) > 0 {
		mean := sum / time.Duration(len(r.AdviseTimes))
		f.AdviseMs = float64(mean.Microseconds()) / 1000
		f.AdviseMaxMs = float64(longest.Microseconds()) / 1000
		if mean > 0 && r.Advised > 0 {
			f.MergeMBps = float64(r.Advised) / 1e6 / mean.Seconds()
		}
	}
	return f
}

// Write writes results.md, results.csv, samples.csv and the plots into dir.
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

func (rep *Report) writeMarkdown(path string, figs []Figures) error {
	var b strings.Builder
	o := rep.Opts
	fmt.Fprintf(&b, "# Density of the imageclass function\n\n")
	fmt.Fprintf(&b, "Generated %s by `go test -bench . ./bench` (in guest: %t).\n\n", time.Now().UTC().Format(time.RFC3339), o.InGuest)
	fmt.Fprintf(&b, "Each instance loads %.1f MiB of decoded face-model weights (advised when the backend merges). ", float64(rep.ModelSize)/mib)
	fmt.Fprintf(&b, "KSM wait cap %v, sampling every %v, density budget %d MiB.\n\n", o.KSMWait, o.Sample, o.Budget/mib)
	if len(figs) > 0 {
		fmt.Fprintf(&b, "Instances: %s.\n\n", figs[0].Isolation)
	}
	b.WriteString("| config | N | total PSS MiB | used MiB | cgroups MiB | saved vs none | MiB per extra instance | density | time to dedup s | ksmd CPU s | advise sys CPU s | advise ms (mean/max) | merge MB/s |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, f := range figs {
		dedup := num(f.DedupS, 2)
		if f.Capped {
			dedup = fmt.Sprintf("> %s (cap)", num(f.WaitS, 0))
		}
		saved := "-"
		if !math.IsNaN(f.SavedPct) {
			saved = num(f.SavedPct, 1) + "%"
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n",
			f.Config, f.N, num(f.PSSMiB, 1), num(f.UsedMiB, 1), num(f.CgroupMiB, 1), saved,
			num(f.MarginalMiB, 2), num(f.Density, 0), dedup, num(f.KSMDCPUS, 2), num(f.AdviseSysS, 3),
			num(f.AdviseMs, 2), num(f.AdviseMaxMs, 2), num(f.MergeMBps, 0))
	}
	if len(rep.HashMBps) > 0 {
		b.WriteString("\nUser-space hashing of the same decoded weights in the same machine (the practical limit of a merge that reads every byte):\n\n")
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
	b.WriteString("\nPlots: memory_vs_instances.svg/.png, memory_over_time.svg/.png. Raw data: results.csv, samples.csv (every sample), instances.csv (each instance at the end).\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func (rep *Report) writeCSV(path string, figs []Figures) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"config", "n", "pss_mib", "used_mib", "cgroup_mib", "saved_pct", "marginal_mib", "density",
		"dedup_s", "dedup_capped", "waited_s", "ksmd_cpu_s", "advise_sys_s", "advise_ms_mean", "advise_ms_max",
		"merge_mbps", "advised_mib_per_instance", "ready_s"})
	for _, g := range figs {
		_ = w.Write([]string{g.Config, strconv.Itoa(g.N), num(g.PSSMiB, 2), num(g.UsedMiB, 2), num(g.CgroupMiB, 2),
			num(g.SavedPct, 2), num(g.MarginalMiB, 3), num(g.Density, 1), num(g.DedupS, 3), strconv.FormatBool(g.Capped),
			num(g.WaitS, 2), num(g.KSMDCPUS, 3), num(g.AdviseSysS, 4), num(g.AdviseMs, 3), num(g.AdviseMaxMs, 3),
			num(g.MergeMBps, 1), num(g.AdvisedMiB, 2), num(g.ReadyS, 2)})
	}
	w.Flush()
	return errors.Join(w.Error(), f.Close())
}

func (rep *Report) writeSamples(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"config", "n", "t_s", "after_ready", "pss_mib", "cgroup_mib", "used_mib", "pages_sharing"})
	for _, r := range rep.Results {
		for _, s := range r.Samples {
			_ = w.Write([]string{r.Config, strconv.Itoa(r.N), num(s.T.Seconds(), 3), strconv.FormatBool(s.T >= r.Ready),
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
	_ = w.Write([]string{"config", "n", "instance", "backend", "pss_mib", "cgroup_mib", "advised_mib",
		"load_ms", "advise_ms", "advise_sys_ms", "classify_ms", "result"})
	ms := func(d time.Duration) string { return num(float64(d.Microseconds())/1000, 3) }
	for _, r := range rep.Results {
		for i, in := range r.Instances {
			var p, m int64
			if i < len(r.InstancePSS) {
				p, m = r.InstancePSS[i], r.InstanceCgroupMem[i]
			}
			_ = w.Write([]string{r.Config, strconv.Itoa(r.N), in.Name, in.Backend,
				num(float64(p)/mib, 2), num(float64(m)/mib, 2), num(float64(in.AdvisedBytes)/mib, 2),
				ms(in.LoadTime), ms(in.AdviseTime), ms(in.AdviseSysTime), ms(in.ClassifyTime), in.Result})
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

func (rep *Report) plotMemory(dir string, figs []Figures) error {
	p := plot.New()
	p.Title.Text = "Memory of N imageclass instances"
	p.X.Label.Text = "instances"
	p.Y.Label.Text = "total PSS (MiB)"
	p.Legend.Top, p.Legend.Left = true, true
	p.Y.Min = 0
	for i, c := range rep.configs() {
		var pts plotter.XYs
		for _, f := range figs {
			if f.Config == c {
				pts = append(pts, plotter.XY{X: float64(f.N), Y: f.PSSMiB})
			}
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
	p.Title.Text = fmt.Sprintf("Memory of %d instances after the first start", maxN)
	p.X.Label.Text = "seconds after the first instance started"
	p.Y.Label.Text = "total PSS (MiB)"
	p.Legend.Top = true
	p.Y.Min = 0
	for i, c := range rep.configs() {
		r := rep.find(c, maxN)
		if r == nil {
			continue
		}
		pts := make(plotter.XYs, len(r.Samples))
		for j, s := range r.Samples {
			pts[j] = plotter.XY{X: s.T.Seconds(), Y: float64(s.PSS) / mib}
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
