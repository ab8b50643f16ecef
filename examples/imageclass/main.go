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
// When the models are loaded and advised it prints one JSON line on stdout, so
// that a harness knows the instance is ready:
//
//	{"ready":true,"pid":4242,"addr":"127.0.0.1:8080","backend":"upm","advised_bytes":27643904,...}
//
// Endpoints:
//
//	POST /classify   a JPEG or PNG body; the faces found, as JSON (classifier.Result).
//	                 Query parameters: input_size (multiple of 32, default 416),
//	                 min_score (default 0.5), max_faces (default all).
//	GET  /healthz    "ok" once the model is loaded.
//	GET  /stats      the load statistics and upm.ReadProcessStats, as JSON.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/upm-project/upm"
	"github.com/upm-project/upm/examples/imageclass/classifier"
)

// maxImageBytes bounds the body of /classify.
const maxImageBytes = 32 << 20

func main() {
	log.SetFlags(0)
	log.SetPrefix("imageclass: ")
	modelDir := flag.String("model", defaultModelDir(), "directory of the models (examples/imageclass/fetch-model.sh)")
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on (port 0 picks one; the ready line names it)")
	models := flag.String("models", "", "comma-separated models to load (default: all of "+strings.Join(classifier.Models, ",")+")")
	keepRaw := flag.Bool("keep-raw", false, "also keep the weight files' bytes, read and advised with upm.AdviseFile")
	flag.Parse()

	opts := &classifier.Options{KeepRaw: *keepRaw}
	if *models != "" {
		opts.Models = strings.Split(*models, ",")
	}
	m, err := classifier.Load(*modelDir, opts)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(readyRecord(m, ln.Addr().String())); err != nil {
		log.Fatal(err)
	}

	srv := &http.Server{Handler: newHandler(m), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
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
	LoadMillis   float64 `json:"load_ms"`
	AdviseMillis float64 `json:"advise_ms"`
}

func readyRecord(m *classifier.Model, addr string) ready {
	st := m.Stats()
	return ready{
		Ready:        true,
		PID:          os.Getpid(),
		Addr:         addr,
		LoadStats:    st,
		LoadMillis:   float64(st.LoadTime.Microseconds()) / 1000,
		AdviseMillis: float64(st.AdviseTime.Microseconds()) / 1000,
	}
}

// newHandler returns the function's HTTP handler.
func newHandler(m *classifier.Model) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		ps, err := upm.ReadProcessStats()
		out := struct {
			Load    classifier.LoadStats `json:"load"`
			Process upm.ProcessStats     `json:"process"`
			Error   string               `json:"error,omitempty"`
		}{Load: m.Stats(), Process: ps}
		if err != nil {
			out.Error = err.Error()
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /classify", func(w http.ResponseWriter, r *http.Request) {
		var opts classifier.ClassifyOptions
		q := r.URL.Query()
		for _, p := range []struct {
			name string
			set  func(string) error
		}{
			{"input_size", func(s string) (err error) { opts.InputSize, err = strconv.Atoi(s); return }},
			{"max_faces", func(s string) (err error) { opts.MaxFaces, err = strconv.Atoi(s); return }},
			{"min_score", func(s string) (err error) { opts.MinScore, err = strconv.ParseFloat(s, 64); return }},
		} {
			if v := q.Get(p.name); v != "" {
				if err := p.set(v); err != nil {
					httpError(w, http.StatusBadRequest, fmt.Errorf("%s: %w", p.name, err))
					return
				}
			}
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxImageBytes))
		if err != nil {
			httpError(w, http.StatusRequestEntityTooLarge, err)
			return
		}
		img, err := classifier.Decode(bytes.NewReader(body))
		if err != nil {
			httpError(w, http.StatusUnsupportedMediaType, err)
			return
		}
		res, err := m.Classify(img, opts)
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	return mux
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
