//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
)

// upmCommand is the operator's command, put into the guest's /bin by the VM
// rig (UPM_COMMAND).
const upmCommand = "/bin/upm"

// runCommand runs upm with args and decodes its -o json output into v.
func runCommand(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := exec.Command(upmCommand, args...).Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		t.Fatalf("upm %q: %v\n%s", args, err, exit.Stderr)
	}
	require.NoError(t, err, "upm %q", args)
	if v != nil {
		require.NoError(t, json.Unmarshal(out, v), "upm %q:\n%s", args, out)
	}
}

// commandProcess is a process as upm top -o json shows it.
type commandProcess struct {
	PID           int    `json:"pid"`
	Cgroup        string `json:"cgroup"`
	Domain        string `json:"domain"`
	MergingPages  int64  `json:"merging_pages"`
	RmapItems     int64  `json:"rmap_items"`
	ProfitBytes   int64  `json:"profit_bytes"`
	AdvisedRanges int    `json:"advised_ranges"`
	AdvisedBytes  int64  `json:"advised_bytes"`
}

type commandTop struct {
	Processes []commandProcess `json:"processes"`
}

// commandDomain is a merge domain as upm domains -o json shows it.
type commandDomain struct {
	Domain       string `json:"domain"`
	Processes    uint64 `json:"processes"`
	PagesShared  uint64 `json:"pages_shared"`
	PagesSharing uint64 `json:"pages_sharing"`
	Candidates   uint64 `json:"candidates"`
	IndexBytes   uint64 `json:"index_bytes"`
}

type commandDoctor struct {
	Findings []struct {
		Code string `json:"code"`
		PIDs []int  `json:"pids"`
	} `json:"findings"`
}

// alone returns the processes doctor finds alone in a domain of their own.
func (d commandDoctor) alone() []int {
	var pids []int
	for _, f := range d.Findings {
		if f.Code == "node-alone-in-domain" {
			pids = append(pids, f.PIDs...)
		}
	}
	return pids
}

// TestCommandOnTheNode runs the upm command against real processes in real
// cgroups: doctor names two instances that are each alone in their own
// cgroup's domain and stops naming them once upm domains mark gives their
// cgroups one name; after they advise again, top, domains and the exporter
// show what the kernel counts for them (ksm_stat, the domains file).
func TestCommandOnTheNode(t *testing.T) {
	upmTest(t)
	_, err := os.Stat(upmCommand)
	require.NoError(t, err, "the VM rig puts the upm command into /bin (UPM_COMMAND)")
	pages := sized(512)
	root := cgroupV2Root(t)
	makeCgroups(t, root, "upmcmd/pod0", "upmcmd/pod1")
	var ws []*worker
	var pids []int
	for _, pod := range []string{"pod0", "pod1"} {
		w := startWorker(t)
		w.moveTo(filepath.Join(root, "upmcmd", pod))
		w.must("map %d 0 5", pages)
		require.Equal(t, "upm", w.must("advise 0 %d", pages))
		require.Zero(t, w.mustInt("stat"), "alone in its cgroup's domain")
		ws, pids = append(ws, w), append(pids, w.cmd.Process.Pid)
	}

	var d commandDoctor
	runCommand(t, &d, "doctor", "-o", "json")
	assert.Subset(t, d.alone(), pids, "doctor names both instances: %+v", d)

	name := "upmcmd-fn"
	runCommand(t, nil, "domains", "mark", "/upmcmd/pod0", name)
	runCommand(t, nil, "domains", "mark", filepath.Join(root, "upmcmd/pod1"), name)
	d = commandDoctor{}
	runCommand(t, &d, "doctor", "-o", "json")
	for _, pid := range pids {
		assert.NotContains(t, d.alone(), pid, "no longer alone once marked: %+v", d)
	}

	for _, w := range ws {
		require.Equal(t, "upm", w.must("advise 0 %d", pages))
	}
	var top commandTop
	runCommand(t, &top, "top", "-o", "json")
	for i, w := range ws {
		j := slices.IndexFunc(top.Processes, func(p commandProcess) bool { return p.PID == pids[i] })
		require.GreaterOrEqual(t, j, 0, "worker %d in upm top: %+v", i, top)
		p := top.Processes[j]
		assert.Equal(t, pages, p.MergingPages, "worker %d", i)
		assert.Equal(t, w.mustInt("stat"), p.MergingPages, "worker %d: ksm_merging_pages", i)
		assert.Equal(t, w.ksmStat("ksm_rmap_items"), p.RmapItems, "worker %d", i)
		assert.Equal(t, w.ksmStat("ksm_process_profit"), p.ProfitBytes, "worker %d", i)
		assert.Equal(t, name, p.Domain, "worker %d", i)
		assert.Equal(t, filepath.Join("/upmcmd", []string{"pod0", "pod1"}[i]), p.Cgroup, "worker %d", i)
		assert.GreaterOrEqual(t, p.AdvisedBytes, pages*pageSize, "worker %d", i)
	}

	var rows []commandDomain
	runCommand(t, &rows, "domains", "-o", "json")
	st, err := upm.ReadSystemStats()
	require.NoError(t, err)
	kernel := domainLine(t, st.UPM.Domains, name)
	i := slices.IndexFunc(rows, func(r commandDomain) bool { return r.Domain == name })
	require.GreaterOrEqual(t, i, 0, "%s in upm domains: %+v", name, rows)
	assert.Equal(t, uint64(2), rows[i].Processes)
	assert.Equal(t, uint64(pages), rows[i].PagesShared)
	assert.Equal(t, uint64(pages), rows[i].PagesSharing)
	assert.Equal(t, kernel.PagesShared, rows[i].PagesShared, "as the kernel counts")
	assert.Equal(t, kernel.IndexBytes, rows[i].IndexBytes, "as the kernel counts")

	// The exporter, scraped over HTTP and read with Prometheus' parser,
	// says what the kernel says.
	families := scrapeExporter(t)
	domainValue := func(family string) float64 {
		for _, m := range families[family].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "domain" && l.GetValue() == name {
					return m.GetGauge().GetValue()
				}
			}
		}
		t.Fatalf("no %s{domain=%q} in the exporter's metrics", family, name)
		return 0
	}
	assert.Equal(t, float64(kernel.PagesShared), domainValue("upm_domain_pages_shared"))
	assert.Equal(t, float64(kernel.PagesSharing), domainValue("upm_domain_pages_sharing"))
	assert.Equal(t, float64(2), domainValue("upm_domain_processes"))
	assert.Equal(t, float64(kernel.SavedBytes()), domainValue("upm_domain_saved_bytes"))

	runCommand(t, nil, "domains", "unmark", "/upmcmd/pod0")
	dom, err := upm.MergeDomainOf(pids[0])
	require.NoError(t, err)
	assert.False(t, dom.Marked, "unmarked: %+v", dom)
	for _, w := range ws {
		w.must("check")
		w.exit()
	}
}

// scrapeExporter runs upm exporter on a free port of the loopback, scrapes
// /metrics once and parses it.
func scrapeExporter(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	cmd := exec.Command(upmCommand, "exporter", "-listen", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	// "upm exporter: serving http://ADDR/metrics"
	line, err := bufio.NewReader(stderr).ReadString('\n')
	require.NoError(t, err)
	_, url, ok := strings.Cut(strings.TrimSpace(line), "serving ")
	require.True(t, ok, "the exporter says where it serves: %q", line)
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return families
}

// TestCommandOCIHook gives upm oci-hook the state a runtime would (the
// container's process and its io.upm.domain annotation): the hook marks the
// process's cgroup, and two "containers" so marked, each in a cgroup of its
// own, share their pages; a container without the annotation is left alone.
func TestCommandOCIHook(t *testing.T) {
	upmTest(t)
	pages := sized(256)
	root := cgroupV2Root(t)
	makeCgroups(t, root, "upmhook/ctr0", "upmhook/ctr1", "upmhook/plain")
	name := "upmhook-fn"
	var ws []*worker
	for i, ctr := range []string{"ctr0", "ctr1", "plain"} {
		w := startWorker(t)
		w.moveTo(filepath.Join(root, "upmhook", ctr))
		state := map[string]any{"ociVersion": "1.2.0", "id": ctr, "status": "creating",
			"pid": w.cmd.Process.Pid, "bundle": "/run/" + ctr}
		if i < 2 {
			state["annotations"] = map[string]string{"io.upm.domain": name}
		}
		b, err := json.Marshal(state)
		require.NoError(t, err)
		cmd := exec.Command(upmCommand, "oci-hook")
		cmd.Stdin = strings.NewReader(string(b))
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "upm oci-hook: %s", out)
		d, err := upm.MergeDomainOf(w.cmd.Process.Pid)
		require.NoError(t, err)
		if i < 2 {
			assert.Equal(t, name, d.Name, "%s: %s", ctr, out)
		} else {
			assert.False(t, d.Marked, "%s without the annotation is left alone: %+v", ctr, d)
		}
		w.must("map %d 0 6", pages)
		require.Equal(t, "upm", w.must("advise 0 %d", pages))
		ws = append(ws, w)
	}
	assert.Equal(t, pages, ws[1].mustInt("stat"), "the two annotated containers share")
	assert.Zero(t, ws[2].mustInt("stat"), "the plain one is a domain of its own")

	bad := exec.Command(upmCommand, "oci-hook")
	bad.Stdin = strings.NewReader(`{"id": "x", "pid": 1, "annotations": {"io.upm.domain": "no spaces allowed"}}`)
	out, err := bad.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "a bad name fails the hook: %s", out)
	assert.Equal(t, 1, exit.ExitCode())
	for _, w := range ws {
		w.must("check")
		w.exit()
	}
}
