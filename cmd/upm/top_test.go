// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// writeProc makes a /proc/PID directory under root with the given files.
func writeProc(t *testing.T, root, pid string, files map[string]string) {
	t.Helper()
	dir := filepath.Join(root, pid)
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
}

func TestReadTop(t *testing.T) {
	root := t.TempDir()
	smaps := "7f0000000000-7f0000200000 rw-p 00000000 00:00 0\nSize:               2048 kB\nVmFlags: rd wr mr mw me ac mg\n" +
		"7f0000200000-7f0000300000 rw-p 00000000 00:00 0\nSize:               1024 kB\nVmFlags: rd wr mr mw me ac\n" +
		"7f0000300000-7f0000301000 rw-p 00000000 00:00 0\nSize:                  4 kB\nVmFlags: rd wr mr mw me ac mg\n"
	writeProc(t, root, "100", map[string]string{
		"ksm_stat": "ksm_rmap_items 513\nksm_zero_pages 0\nksm_merging_pages 500\nksm_process_profit 2015232\nksm_merge_any: no\nksm_mergeable: yes\n",
		"comm":     "imageclass\n", "cgroup": "0::/fn/imageclass/0\n", "smaps": smaps,
	})
	writeProc(t, root, "200", map[string]string{
		"ksm_stat": "ksm_rmap_items 10\nksm_zero_pages 0\nksm_merging_pages 0\nksm_process_profit -640\nksm_merge_any: no\nksm_mergeable: yes\n",
		"comm":     "fresh\n", "cgroup": "0::/fn/imageclass/1\n",
	})
	// Nothing advised: not shown.
	writeProc(t, root, "300", map[string]string{
		"ksm_stat": "ksm_rmap_items 0\nksm_zero_pages 0\nksm_merging_pages 0\nksm_process_profit 0\nksm_merge_any: no\nksm_mergeable: no\n",
		"comm":     "bash\n", "cgroup": "0::/\n",
	})
	// Linux 6.12 has no ksm_mergeable: merged pages tell, and
	// rmap_items (a UPM process alone in its domain merges nothing).
	writeProc(t, root, "400", map[string]string{
		"ksm_stat": "ksm_rmap_items 3\nksm_zero_pages 0\nksm_merging_pages 2\nksm_process_profit 8000\n",
		"comm":     "old\n", "cgroup": "0::/x\n",
	})
	writeProc(t, root, "500", map[string]string{
		"ksm_stat": "ksm_rmap_items 64\nksm_zero_pages 0\nksm_merging_pages 0\nksm_process_profit -4096\n",
		"comm":     "alone\n", "cgroup": "0::/y\n",
	})
	writeProc(t, root, "600", map[string]string{
		"ksm_stat": "ksm_rmap_items 0\nksm_zero_pages 0\nksm_merging_pages 0\nksm_process_profit 0\n",
		"comm":     "idle\n", "cgroup": "0::/\n",
	})
	writeProc(t, root, "self", nil) // not a pid
	require.NoError(t, os.WriteFile(filepath.Join(root, "meminfo"), nil, 0o644))

	r, err := readTop(root, func(pid int) string { return map[int]string{100: "fn/imageclass"}[pid] })
	require.NoError(t, err)
	require.Len(t, r.Processes, 4)
	assert.Equal(t, procRow{PID: 100, Command: "imageclass", Cgroup: "/fn/imageclass/0", Domain: "fn/imageclass",
		MergingPages: 500, RmapItems: 513, ProfitBytes: 2015232, AdvisedRanges: 2, AdvisedBytes: (2048 + 4) << 10}, r.Processes[0])
	assert.Equal(t, 400, r.Processes[1].PID, "by profit, largest first")
	assert.Equal(t, 200, r.Processes[2].PID)
	assert.Equal(t, int64(-640), r.Processes[2].ProfitBytes, "bookkeeping without merged pages costs")
	assert.Equal(t, 500, r.Processes[3].PID)

	var out bytes.Buffer
	require.NoError(t, writeTop(&out, r, "table", 1))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2, "-n 1: the header and one process\n%s", out.String())
	assert.Contains(t, lines[1], "imageclass")
	assert.Contains(t, lines[1], "1.9 MiB")

	out.Reset()
	require.NoError(t, writeTop(&out, r, "json", 0))
	var back topReport
	require.NoError(t, json.Unmarshal(out.Bytes(), &back))
	assert.Equal(t, r, back)
}

func TestCgroupDir(t *testing.T) {
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "kubepods/pod1"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "kubepods/pod1/cgroup.procs"), nil, 0o644))
	for _, arg := range []string{"/kubepods/pod1", "kubepods/pod1/", filepath.Join(root, "kubepods/pod1")} {
		dir, err := cgroupDir(root, arg)
		require.NoError(t, err, arg)
		assert.Equal(t, filepath.Join(root, "kubepods/pod1"), dir, arg)
	}
	_, err := cgroupDir(root, "/kubepods/nope")
	assert.ErrorContains(t, err, "no such cgroup")
	_, err = cgroupDir(root, "/kubepods") // a directory, but no cgroup
	assert.Error(t, err)
	assert.Equal(t, "/", cgroupPath(cgroupRoot))
	assert.Equal(t, "/fn/a", cgroupPath(cgroupRoot+"/fn/a"))
}
