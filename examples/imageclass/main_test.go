// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm/examples/imageclass/classifier"
)

func testModel(t *testing.T) (*classifier.Model, string) {
	t.Helper()
	dir := os.Getenv("UPM_MODEL_DIR")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", "build", "model")
	}
	if _, err := os.Stat(filepath.Join(dir, "sample2.jpg")); err != nil {
		t.Skipf("no models in %s: run examples/imageclass/fetch-model.sh", dir)
	}
	// The expression and age models are enough here, and quick.
	m, err := classifier.Load(dir, &classifier.Options{Models: []string{"face_expression_model", "age_gender_model"}})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m, dir
}

func TestHandler(t *testing.T) {
	m, dir := testModel(t)
	srv := httptest.NewServer(newHandler(m))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	img, err := os.ReadFile(filepath.Join(dir, "sample2.jpg"))
	require.NoError(t, err)
	resp, err = http.Post(srv.URL+"/classify", "image/jpeg", bytes.NewReader(img))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var res classifier.Result
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&res))
	assert.Equal(t, 1920, res.Width)
	require.Len(t, res.Faces, 1)
	assert.Equal(t, "sad", res.Faces[0].Expression)
	assert.Equal(t, "female", res.Faces[0].Gender)
	assert.Empty(t, res.Faces[0].Descriptor, "recognition model not loaded")

	resp2, err := http.Get(srv.URL + "/stats")
	require.NoError(t, err)
	defer resp2.Body.Close()
	var stats struct {
		Load classifier.LoadStats `json:"load"`
	}
	require.NoError(t, json.NewDecoder(resp2.Body).Decode(&stats))
	assert.Equal(t, m.Stats().Params, stats.Load.Params)
}

func TestHandlerErrors(t *testing.T) {
	m, dir := testModel(t)
	h := newHandler(m)
	for _, tc := range []struct {
		method, target string
		body           []byte
		code           int
	}{
		{"POST", "/classify", []byte("GIF89a not really"), http.StatusUnsupportedMediaType},
		{"POST", "/classify?input_size=abc", nil, http.StatusBadRequest},
		{"GET", "/classify", nil, http.StatusMethodNotAllowed},
		{"GET", "/nope", nil, http.StatusNotFound},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.target, bytes.NewReader(tc.body)))
		assert.Equal(t, tc.code, rec.Code, "%s %s", tc.method, tc.target)
	}

	img, err := os.ReadFile(filepath.Join(dir, "sample2.jpg"))
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/classify?input_size=100", bytes.NewReader(img)))
	assert.Equal(t, http.StatusBadRequest, rec.Code)
	assert.Contains(t, rec.Body.String(), "multiple of 32")
}

func TestReadyRecord(t *testing.T) {
	m, _ := testModel(t)
	b, err := json.Marshal(readyRecord(m, "127.0.0.1:1"))
	require.NoError(t, err)
	var r map[string]any
	require.NoError(t, json.Unmarshal(b, &r))
	assert.Equal(t, true, r["ready"])
	assert.EqualValues(t, os.Getpid(), r["pid"])
	for _, k := range []string{"backend", "advised_bytes", "load_ms", "advise_ms", "advise_sys_ns", "decoded_bytes"} {
		assert.Contains(t, r, k)
	}
}
