// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"reflect"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
)

// TestExporterServesTheKernelsFigures starts the exporter on a free port,
// scrapes it over HTTP, parses the text format and compares with what the
// kernel says (ksmd is left as it is: the host's settings are not ours).
func TestExporterServesTheKernelsFigures(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- exporter(ctx, io.Discard, "127.0.0.1:0", func(a net.Addr) { addr <- a }) }()
	a := <-addr

	resp, err := http.Get("http://" + a.String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)

	st, err := upm.ReadSystemStats()
	if err != nil && !st.KSM.Present && !st.UPM.Present {
		require.Equal(t, 0.0, families["upm_node_stats_up"].GetMetric()[0].GetGauge().GetValue())
	} else {
		require.Equal(t, 1.0, families["upm_node_stats_up"].GetMetric()[0].GetGauge().GetValue())
	}
	if st.KSM.Present {
		require.Contains(t, families, "ksm_full_scans_total")
		// Counters only grow between the scrape and our read.
		assert.LessOrEqual(t, families["ksm_full_scans_total"].GetMetric()[0].GetCounter().GetValue(), float64(st.KSM.FullScans))
		require.Contains(t, families, "upm_node_saved_bytes")
	}
	assert.Equal(t, st.UPM.Present, families["upm_pages_advised_total"] != nil, "UPM's counters only on a UPM kernel")

	cancel()
	require.NoError(t, <-done)
}

// TestCollectorDescribesEverything: every metric the collector may emit
// has its description, on this kernel or another (a nil one panics the
// scrape where the series is emitted, e.g. only on a UPM kernel).
func TestCollectorDescribesEverything(t *testing.T) {
	c := reflect.ValueOf(newNodeCollector()).Elem()
	for i := 0; i < c.NumField(); i++ {
		assert.False(t, c.Field(i).IsNil(), "nodeCollector.%s has no description", c.Type().Field(i).Name)
	}
}
