// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Command imageclass is a serverless-style image recognition function: it
// loads face-api's pretrained face models once, at start, advises their
// decoded weights with package upm so that every instance of the function
// shares one copy, and then classifies the photos it is sent.
//
//	examples/imageclass/fetch-model.sh          # once: models into build/model
//	go run ./examples/imageclass -listen 127.0.0.1:8080 &
//	curl --data-binary @build/model/sample1.jpg http://127.0.0.1:8080/classify
//
// The weights are decoded into a sealed upm.Arena, or with -weights heap into
// one []float32 slab on the Go heap advised with upm.AdviseSlice.
//
// When the models are loaded and advised, and the server listens, it prints
// one JSON line on stdout (folded here), so that a harness knows the instance
// is ready and where (with -listen 127.0.0.1:0 the port is picked and named
// in addr):
//
//	{"ready":true,"pid":7255,"addr":"127.0.0.1:46477","backend":"ksm","weights":"arena","models":[...],
//	 "params":6910171,"decoded_bytes":27643904,"raw_bytes":0,"advised_bytes":27643904,"load_ns":102988142,
//	 "advise_ns":1182298,"advise_sys_ns":0,"load_ms":102.988,"advise_ms":1.182,"start_to_ready_ms":106.897}
//
// Its fields are ready, pid, addr; those of classifier.LoadStats (backend,
// weights, models, params, decoded_bytes, raw_bytes, advised_bytes,
// not_advised when nothing was advised, load_ns, advise_ns, advise_sys_ns);
// and load_ms, advise_ms and start_to_ready_ms, the time from the program's
// start (its main package's initialisation) to the line.
//
// Endpoints:
//
//	POST /classify   a JPEG or PNG body; the faces found, as JSON (classifier.Result).
//	                 Query parameters: input_size (multiple of 32, default 416),
//	                 min_score (default 0.5), max_faces (default all), models
//	                 (comma-separated networks to run on each face, default all
//	                 loaded; the detector always runs).
//	GET  /healthz    "ok" once the model is loaded.
//	GET  /stats      the load statistics and upm.ReadProcessStats, as JSON;
//	                 the latter at most -stats-max-age old unless ?fresh=1.
//
// A request to check that an instance answers correctly, cheaply enough under
// emulation (the density benchmark sends it): the face of sample2.jpg, the
// rectangle classifier.Sample2Face of build/model/sample2.jpg encoded as PNG,
// sent as
//
//	POST /classify?input_size=128&max_faces=1&models=face_expression_model
//
// answers 200 with one face whose expression is "sad": .faces[0].expression
// in the JSON (with a probability of 0.999 in .faces[0].expressions.sad).
// The detector at input_size 128 runs on a 128x128 input, and only the
// expression network on the face; without models every loaded network runs,
// with the same expression. Smaller sizes are not reliable on this crop: 64
// finds the face at a score of 0.555, barely over min_score, 96 and 32 find
// none, and 160 and 192 take it for "neutral".
//
// Errors are JSON, {"error": "..."}: 400 for a bad query or a body that
// could not be read, 413 for a body over 32 MiB or an image of more than
// -max-pixels pixels (refused from its header, before it is decoded), 415
// for a body that is neither JPEG nor PNG, 422 for one that does not decode,
// and 503 when the request ends while it waits for one of the -max-concurrent
// classifications to finish.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/upm-project/upm"
	"github.com/upm-project/upm/examples/imageclass/classifier"
)

// started is when the program started, near enough: when its main package
// was initialised, after the runtime and the packages it imports.
var started = time.Now()

// maxImageBytes bounds the body of /classify.
const maxImageBytes = 32 << 20

func main() {
	log.SetFlags(0)
	log.SetPrefix("imageclass: ")
	modelDir := flag.String("model", defaultModelDir(), "directory of the models (examples/imageclass/fetch-model.sh)")
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on (port 0 picks one; the ready line names it)")
	models := flag.String("models", "", "comma-separated models to load (default: all of "+strings.Join(classifier.Models, ",")+")")
	keepRaw := flag.Bool("keep-raw", false, "also keep the weight files' bytes, read and advised with upm.AdviseFile")
	weights := flag.String("weights", string(classifier.WeightsArena), "where the decoded weights live: arena (a sealed upm.Arena) or heap (one slab on the Go heap, upm.AdviseSlice)")
	lim := defaultLimits()
	flag.Int64Var(&lim.MaxPixels, "max-pixels", lim.MaxPixels, "largest image to decode, in pixels (width times height); larger ones get 413")
	flag.IntVar(&lim.MaxConcurrent, "max-concurrent", lim.MaxConcurrent, "classifications run at once; more requests wait")
	flag.DurationVar(&lim.StatsMaxAge, "stats-max-age", lim.StatsMaxAge, "how old the process statistics of /stats may be (they are read from /proc/self/smaps_rollup)")
	flag.Parse()

	w, err := classifier.ParseWeights(*weights)
	if err != nil {
		log.Fatal(err)
	}
	opts := &classifier.Options{KeepRaw: *keepRaw, Weights: w}
	if *models != "" {
		opts.Models = strings.Split(*models, ",")
	}
	m, err := classifier.Load(*modelDir, opts)
	if err != nil {
		log.Fatal(err)
	}
	h, err := newServer(m, lim)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	// Load leaves garbage behind: the manifests, the file bytes where the
	// shards cannot be mapped, the heap grown to its collection goal. The
	// runtime returns freed memory to the OS only gradually, in the
	// background, so without this an instance would hold more or less of
	// it depending on when it is measured, and the arena and heap
	// placements, which leave different garbage, would not compare. Every
	// configuration is measured on what an idle instance holds.
	debug.FreeOSMemory()
	if err := json.NewEncoder(os.Stdout).Encode(readyRecord(m, ln.Addr().String())); err != nil {
		log.Fatal(err)
	}

	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	shutDown := make(chan struct{})
	go func() {
		defer close(shutDown)
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	// Serve returns as soon as Shutdown starts: let the requests in
	// flight finish.
	<-shutDown
}

// defaultModelDir is $UPM_MODEL_DIR, else build/model.
func defaultModelDir() string {
	if d := os.Getenv("UPM_MODEL_DIR"); d != "" {
		return d
	}
	return "build/model"
}

// ready is the line printed when the function is ready to serve.
type ready struct {
	Ready bool   `json:"ready"`
	PID   int    `json:"pid"`
	Addr  string `json:"addr"`
	classifier.LoadStats
	LoadMillis         float64 `json:"load_ms"`
	AdviseMillis       float64 `json:"advise_ms"`
	StartToReadyMillis float64 `json:"start_to_ready_ms"`
}

func readyRecord(m *classifier.Model, addr string) ready {
	st := m.Stats()
	return ready{
		Ready:              true,
		PID:                os.Getpid(),
		Addr:               addr,
		LoadStats:          st,
		LoadMillis:         millis(st.LoadTime),
		AdviseMillis:       millis(st.AdviseTime),
		StartToReadyMillis: millis(time.Since(started)),
	}
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// limits bound what an instance spends on requests.
type limits struct {
	// MaxBodyBytes bounds the body of /classify.
	MaxBodyBytes int64
	// MaxPixels bounds the pixels of an image to decode: a 32 MiB JPEG
	// can decode to gigabytes, so the header is checked first.
	MaxPixels int64
	// MaxConcurrent is the number of images decoded and classified at
	// once, each of which takes up to 4 bytes a pixel and a CPU.
	MaxConcurrent int
	// StatsMaxAge is how long /stats answers the same process statistics.
	StatsMaxAge time.Duration
}

func defaultLimits() limits {
	return limits{
		MaxBodyBytes: maxImageBytes,
		// 40 megapixels, a large camera's photo: 160 MB once decoded.
		MaxPixels:     40_000_000,
		MaxConcurrent: runtime.GOMAXPROCS(0),
		StatsMaxAge:   time.Second,
	}
}

// server is the function's HTTP handler.
type server struct {
	m   *classifier.Model
	lim limits
	mux *http.ServeMux
	sem chan struct{} // a token for each classification running
	// classify is m.Classify; tests replace it to hold a classification.
	classify func(image.Image, classifier.ClassifyOptions) (*classifier.Result, error)

	statsMu  sync.Mutex
	statsAt  time.Time
	stats    upm.ProcessStats
	statsErr error
}

// newServer returns the function's HTTP handler for m.
func newServer(m *classifier.Model, lim limits) (*server, error) {
	if lim.MaxBodyBytes <= 0 || lim.MaxPixels <= 0 || lim.MaxConcurrent <= 0 {
		return nil, fmt.Errorf("limits must be positive: %+v", lim)
	}
	s := &server{m: m, lim: lim, mux: http.NewServeMux(), sem: make(chan struct{}, lim.MaxConcurrent), classify: m.Classify}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /stats", s.serveStats)
	s.mux.HandleFunc("POST /classify", s.serveClassify)
	return s, nil
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// processStats returns upm.ReadProcessStats, read at most StatsMaxAge ago
// unless fresh. Reading them walks the process's mappings in the kernel
// (/proc/self/smaps_rollup, under the mmap lock the page faults and the
// merging need too) and costs milliseconds under emulation, so a harness
// that polls many instances would otherwise perturb what it measures.
// Concurrent callers wait for one read.
func (s *server) processStats(fresh bool) (upm.ProcessStats, time.Time, error) {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	if fresh || s.statsAt.IsZero() || time.Since(s.statsAt) > s.lim.StatsMaxAge {
		s.stats, s.statsErr = upm.ReadProcessStats()
		s.statsAt = time.Now()
	}
	return s.stats, s.statsAt, s.statsErr
}

func (s *server) serveStats(w http.ResponseWriter, r *http.Request) {
	fresh := r.URL.Query().Get("fresh")
	ps, at, err := s.processStats(fresh != "" && fresh != "0" && fresh != "false")
	out := struct {
		Load    classifier.LoadStats `json:"load"`
		Process upm.ProcessStats     `json:"process"`
		// ProcessAgeMillis is how long ago Process was read.
		ProcessAgeMillis float64 `json:"process_age_ms"`
		Error            string  `json:"error,omitempty"`
	}{Load: s.m.Stats(), Process: ps, ProcessAgeMillis: millis(time.Since(at))}
	if err != nil {
		out.Error = err.Error()
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) serveClassify(w http.ResponseWriter, r *http.Request) {
	var opts classifier.ClassifyOptions
	q := r.URL.Query()
	for _, p := range []struct {
		name string
		set  func(string) error
	}{
		{"input_size", func(v string) (err error) { opts.InputSize, err = strconv.Atoi(v); return }},
		{"max_faces", func(v string) (err error) { opts.MaxFaces, err = strconv.Atoi(v); return }},
		{"min_score", func(v string) (err error) { opts.MinScore, err = strconv.ParseFloat(v, 64); return }},
		{"models", func(v string) error { opts.Models = strings.Split(v, ","); return nil }},
	} {
		if v := q.Get(p.name); v != "" {
			if err := p.set(v); err != nil {
				httpError(w, http.StatusBadRequest, fmt.Errorf("%s: %w", p.name, err))
				return
			}
		}
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.lim.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			httpError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("body over %d bytes", tooLarge.Limit))
		} else {
			httpError(w, http.StatusBadRequest, fmt.Errorf("read body: %w", err))
		}
		return
	}
	// The header says how large the image decodes; refuse it before
	// decoding allocates it.
	cfg, _, err := image.DecodeConfig(bytes.NewReader(body))
	switch {
	case errors.Is(err, image.ErrFormat):
		httpError(w, http.StatusUnsupportedMediaType, fmt.Errorf("decode image: %w (want JPEG or PNG)", err))
		return
	case err != nil:
		httpError(w, http.StatusUnprocessableEntity, fmt.Errorf("decode image header: %w", err))
		return
	}
	if px := int64(cfg.Width) * int64(cfg.Height); px > s.lim.MaxPixels {
		httpError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("image of %dx%d pixels: over the limit of %d pixels (-max-pixels)", cfg.Width, cfg.Height, s.lim.MaxPixels))
		return
	}

	// Decoding and classifying take memory and a CPU: only MaxConcurrent
	// at once, the others wait as long as their request lasts.
	select {
	case s.sem <- struct{}{}:
	case <-r.Context().Done():
		w.Header().Set("Retry-After", "1")
		httpError(w, http.StatusServiceUnavailable, fmt.Errorf("waited for one of %d classifications to finish: %w", cap(s.sem), context.Cause(r.Context())))
		return
	}
	defer func() { <-s.sem }()
	img, err := classifier.Decode(bytes.NewReader(body))
	if err != nil {
		httpError(w, http.StatusUnprocessableEntity, err)
		return
	}
	res, err := s.classify(img, opts)
	if err != nil {
		httpError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
