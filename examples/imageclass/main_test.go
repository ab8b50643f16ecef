// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm/examples/imageclass/classifier"
)

// TestMain runs the command itself when the test binary is started with
// IMAGECLASS_MAIN=1, for TestCommand.
func TestMain(m *testing.M) {
	if os.Getenv("IMAGECLASS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testModelDir returns the directory of the models, and skips the test when
// they are missing.
func testModelDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("UPM_MODEL_DIR")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", "build", "model")
	}
	if _, err := os.Stat(filepath.Join(dir, "sample2.jpg")); err != nil {
		t.Skipf("no models in %s: run examples/imageclass/fetch-model.sh", dir)
	}
	return dir
}

func testModel(t *testing.T) (*classifier.Model, string) {
	t.Helper()
	dir := testModelDir(t)
	// The expression and age models are enough here, and quick.
	m, err := classifier.Load(dir, &classifier.Options{Models: []string{"face_expression_model", "age_gender_model"}})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m, dir
}

// testServer returns the handler for m with the default limits, changed by
// set.
func testServer(t *testing.T, m *classifier.Model, set func(*limits)) *server {
	t.Helper()
	lim := defaultLimits()
	if set != nil {
		set(&lim)
	}
	s, err := newServer(m, lim)
	require.NoError(t, err)
	return s
}

// benchImage returns the request body the density benchmark sends: the face
// of sample2.jpg, cropped as face-api's detector boxes it, as PNG.
func benchImage(t *testing.T, dir string) []byte {
	t.Helper()
	sub, err := classifier.Sample2FaceImage(dir)
	require.NoError(t, err)
	var b bytes.Buffer
	require.NoError(t, png.Encode(&b, sub))
	return b.Bytes()
}

// benchQuery is the query of the benchmark's request.
const benchQuery = "/classify?input_size=128&max_faces=1&models=face_expression_model"

func TestHandler(t *testing.T) {
	m, dir := testModel(t)
	srv := httptest.NewServer(testServer(t, m, nil))
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

// TestBenchRequest checks the request the density benchmark sends, and
// what it must answer: the face, "sad".
func TestBenchRequest(t *testing.T) {
	m, dir := testModel(t)
	h := testServer(t, m, nil)
	body := benchImage(t, dir)
	for _, target := range []string{benchQuery, "/classify?input_size=128"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", target, bytes.NewReader(body)))
		require.Equal(t, http.StatusOK, rec.Code, "%s: %s", target, rec.Body)
		var res struct {
			Faces []struct {
				Expression  string             `json:"expression"`
				Expressions map[string]float64 `json:"expressions"`
				Gender      string             `json:"gender"`
			} `json:"faces"`
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &res))
		require.Len(t, res.Faces, 1, target)
		assert.Equal(t, "sad", res.Faces[0].Expression, target)
		assert.InDelta(t, 0.999, res.Faces[0].Expressions["sad"], 0.002, target)
		if strings.Contains(target, "models=") {
			assert.Empty(t, res.Faces[0].Gender, "only the expression network runs")
		} else {
			assert.Equal(t, "female", res.Faces[0].Gender)
		}
	}
}

func TestHandlerErrors(t *testing.T) {
	m, dir := testModel(t)
	h := testServer(t, m, nil)
	for _, tc := range []struct {
		method, target string
		body           []byte
		code           int
	}{
		{"POST", "/classify", []byte("GIF89a not really"), http.StatusUnsupportedMediaType},
		{"POST", "/classify", []byte("\xff\xd8\xff\xe0\x00\x10JFIF"), http.StatusUnprocessableEntity},
		{"POST", "/classify", pngHeader(64, 64), http.StatusUnprocessableEntity},
		{"POST", "/classify?input_size=abc", nil, http.StatusBadRequest},
		{"GET", "/classify", nil, http.StatusMethodNotAllowed},
		{"GET", "/nope", nil, http.StatusNotFound},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.target, bytes.NewReader(tc.body)))
		assert.Equal(t, tc.code, rec.Code, "%s %s: %s", tc.method, tc.target, rec.Body)
	}

	img, err := os.ReadFile(filepath.Join(dir, "sample2.jpg"))
	require.NoError(t, err)
	for target, msg := range map[string]string{
		"/classify?input_size=100":                     "multiple of 32",
		"/classify?models=face_recognition_model":      "not loaded",
		"/classify?models=face_expression_model,nope/": "not loaded",
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", target, bytes.NewReader(img)))
		assert.Equal(t, http.StatusBadRequest, rec.Code, target)
		assert.Contains(t, rec.Body.String(), msg, target)
	}
}

// pngHeader returns the start of a PNG of w x h RGBA pixels: its signature
// and IHDR chunk, which is all image.DecodeConfig reads.
func pngHeader(w, h uint32) []byte {
	chunk := []byte("IHDR")
	chunk = binary.BigEndian.AppendUint32(chunk, w)
	chunk = binary.BigEndian.AppendUint32(chunk, h)
	chunk = append(chunk, 8, 6, 0, 0, 0) // 8 bits a channel, RGBA, no interlace
	b := []byte("\x89PNG\r\n\x1a\n")
	b = binary.BigEndian.AppendUint32(b, uint32(len(chunk)-4))
	b = append(b, chunk...)
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(chunk))
}

// jpegHeader returns the start of a baseline greyscale JFIF JPEG of w x h
// pixels: its APP0 and SOF0 segments.
func jpegHeader(w, h uint16) []byte {
	b := []byte{0xff, 0xd8, 0xff, 0xe0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0}
	b = append(b, 0xff, 0xc0, 0, 11, 8)
	b = binary.BigEndian.AppendUint16(b, h)
	b = binary.BigEndian.AppendUint16(b, w)
	return append(b, 1, 1, 0x11, 0)
}

func TestHugeImageRefused(t *testing.T) {
	m, _ := testModel(t)
	h := testServer(t, m, nil)
	for name, body := range map[string][]byte{
		"png 100000x100000": pngHeader(100000, 100000), // 10 gigapixels, 40 GB as RGBA
		"jpeg 65535x65535":  jpegHeader(65535, 65535),  // 4.3 gigapixels
		"png 8000x5001":     pngHeader(8000, 5001),     // just over 40 megapixels
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/classify", bytes.NewReader(body)))
		runtime.ReadMemStats(&after)
		assert.Equal(t, http.StatusRequestEntityTooLarge, rec.Code, name)
		assert.Equal(t, "application/json", rec.Header().Get("Content-Type"), name)
		var e map[string]string
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e), name)
		assert.Contains(t, e["error"], "over the limit of 40000000 pixels (-max-pixels)", name)
		assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(1<<20), "%s: refused before decoding", name)
	}

	// The limit is what the flag says.
	h = testServer(t, m, func(l *limits) { l.MaxPixels = 64 * 64 })
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/classify", bytes.NewReader(pngHeader(65, 64))))
	assert.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)
	assert.Contains(t, rec.Body.String(), "image of 65x64 pixels")
}

func TestBodyErrors(t *testing.T) {
	m, dir := testModel(t)
	h := testServer(t, m, func(l *limits) { l.MaxBodyBytes = 4096 })
	img, err := os.ReadFile(filepath.Join(dir, "sample2.jpg"))
	require.NoError(t, err)

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/classify", bytes.NewReader(img)))
	assert.Equal(t, http.StatusRequestEntityTooLarge, rec.Code)
	assert.Contains(t, rec.Body.String(), "body over 4096 bytes")

	// A client that goes away mid-body.
	body := iotest.TimeoutReader(bytes.NewReader(img[:1000]))
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/classify", body))
	assert.Equal(t, http.StatusBadRequest, rec.Code)
	assert.Contains(t, rec.Body.String(), "read body")

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/classify", iotest.ErrReader(errors.New("connection reset"))))
	assert.Equal(t, http.StatusBadRequest, rec.Code)
	assert.Contains(t, rec.Body.String(), "connection reset")
}

func TestConcurrencyLimit(t *testing.T) {
	m, dir := testModel(t)
	h := testServer(t, m, func(l *limits) { l.MaxConcurrent = 1 })
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.classify = func(img image.Image, opts classifier.ClassifyOptions) (*classifier.Result, error) {
		once.Do(func() {
			close(entered)
			<-release
		})
		return m.Classify(img, opts)
	}
	body := benchImage(t, dir)

	// The first request holds the one classification.
	first := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(first, httptest.NewRequest("POST", benchQuery, bytes.NewReader(body)))
	}()
	<-entered

	// A second one waits, and gives up when its request ends.
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, "POST", benchQuery, bytes.NewReader(body)))
	assert.GreaterOrEqual(t, time.Since(start), 50*time.Millisecond, "waited for the request's deadline")
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.Equal(t, "1", rec.Header().Get("Retry-After"))
	assert.Contains(t, rec.Body.String(), "waited for one of 1 classifications")

	// A cancelled one at once.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, "POST", benchQuery, bytes.NewReader(body)))
	assert.Equal(t, http.StatusServiceUnavailable, rec.Code)

	// A third one waits its turn and is answered.
	third := httptest.NewRecorder()
	thirdDone := make(chan struct{})
	go func() {
		defer close(thirdDone)
		h.ServeHTTP(third, httptest.NewRequest("POST", benchQuery, bytes.NewReader(body)))
	}()
	close(release)
	<-done
	<-thirdDone
	assert.Equal(t, http.StatusOK, first.Code, first.Body.String())
	assert.Equal(t, http.StatusOK, third.Code, third.Body.String())
	assert.Empty(t, h.sem, "every classification gave its token back")
}

func TestStatsCached(t *testing.T) {
	m, _ := testModel(t)
	h := testServer(t, m, func(l *limits) { l.StatsMaxAge = time.Hour })
	get := func(target string) (ageMillis float64) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", target, nil))
		require.Equal(t, http.StatusOK, rec.Code)
		var out struct {
			Load  classifier.LoadStats `json:"load"`
			Age   *float64             `json:"process_age_ms"`
			Error string               `json:"error"`
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out))
		require.NotNil(t, out.Age)
		assert.Equal(t, m.Stats().Params, out.Load.Params)
		if runtime.GOOS == "linux" {
			assert.Empty(t, out.Error)
		}
		return *out.Age
	}
	assert.Less(t, get("/stats"), 50.0, "read for the first request")
	time.Sleep(60 * time.Millisecond)
	assert.GreaterOrEqual(t, get("/stats"), 60.0, "the same read, not another")
	assert.Less(t, get("/stats?fresh=1"), 50.0, "read again")
	assert.Less(t, get("/stats"), 50.0, "the fresh read")
}

func TestReadyRecord(t *testing.T) {
	m, _ := testModel(t)
	b, err := json.Marshal(readyRecord(m, "127.0.0.1:1"))
	require.NoError(t, err)
	var r map[string]any
	require.NoError(t, json.Unmarshal(b, &r))
	assert.Equal(t, true, r["ready"])
	assert.EqualValues(t, os.Getpid(), r["pid"])
	for _, k := range []string{"backend", "weights", "advised_bytes", "load_ms", "advise_ms", "advise_ns", "advise_sys_ns", "decoded_bytes", "start_to_ready_ms"} {
		assert.Contains(t, r, k)
	}
	assert.Equal(t, "arena", r["weights"])
}

// TestCommand runs the command with -listen 127.0.0.1:0 for each placement
// of the weights, reads its ready line and sends it the benchmark's request.
func TestCommand(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("stops the command with SIGTERM")
	}
	dir := testModelDir(t)
	body := benchImage(t, dir)
	for _, weights := range []string{"arena", "heap"} {
		t.Run(weights, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-listen", "127.0.0.1:0", "-model", dir, "-weights", weights, "-models", "face_expression_model", "-max-concurrent", "2")
			cmd.Env = append(os.Environ(), "IMAGECLASS_MAIN=1")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			stdout, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			defer func() {
				_ = cmd.Process.Signal(syscall.SIGTERM)
				assert.NoError(t, cmd.Wait(), "stderr: %s", &stderr)
			}()

			line, err := bufio.NewReader(stdout).ReadBytes('\n')
			require.NoError(t, err, "stderr: %s", &stderr)
			var r struct {
				Ready          bool    `json:"ready"`
				PID            int     `json:"pid"`
				Addr           string  `json:"addr"`
				Weights        string  `json:"weights"`
				Backend        string  `json:"backend"`
				AdvisedBytes   int64   `json:"advised_bytes"`
				DecodedBytes   int64   `json:"decoded_bytes"`
				NotAdvised     string  `json:"not_advised"`
				AdviseNanos    *int64  `json:"advise_ns"`
				AdviseSysNanos *int64  `json:"advise_sys_ns"`
				LoadMillis     float64 `json:"load_ms"`
				StartToReady   float64 `json:"start_to_ready_ms"`
			}
			require.NoError(t, json.Unmarshal(line, &r), "%s", line)
			assert.True(t, r.Ready)
			assert.Equal(t, cmd.Process.Pid, r.PID)
			assert.Equal(t, weights, r.Weights)
			assert.NotContains(t, r.Addr, ":0", "the port picked")
			assert.Positive(t, r.DecodedBytes)
			assert.NotNil(t, r.AdviseNanos)
			assert.NotNil(t, r.AdviseSysNanos)
			assert.GreaterOrEqual(t, r.StartToReady, r.LoadMillis)
			if r.NotAdvised == "" {
				assert.Positive(t, r.AdvisedBytes)
			}

			resp, err := http.Post(fmt.Sprintf("http://%s%s", r.Addr, benchQuery), "image/png", bytes.NewReader(body))
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			var res classifier.Result
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&res))
			require.Len(t, res.Faces, 1)
			assert.Equal(t, "sad", res.Faces[0].Expression)
		})
	}
}

func TestNewServerLimits(t *testing.T) {
	m, _ := testModel(t)
	_, err := newServer(m, limits{MaxBodyBytes: 1, MaxPixels: 1})
	assert.ErrorContains(t, err, "positive")
}
