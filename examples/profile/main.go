// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Command profile advises two things — weights decoded on the Go heap and a
// table sealed in an arena — and writes a pprof profile of the advised
// memory, which names the code that advised each and how much of it is
// merged:
//
//	go run ./examples/profile -o upm.pb.gz
//	go tool pprof -top upm.pb.gz                        # who advised what
//	go tool pprof -top -sample_index=merged upm.pb.gz   # whose advice saved memory
//	go tool pprof -tags upm.pb.gz                       # by backend and kind
//
// It needs no root and changes no setting.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"

	"github.com/google/pprof/profile"

	"github.com/upm-project/upm"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("profile: ")
	out := flag.String("o", "upm.pb.gz", "profile file to write")
	flag.Parse()

	if err := run(os.Stdout, *out); err != nil {
		log.Fatal(err)
	}
}

// run advises the weights and the table, writes the profile to out and
// shows it on w.
func run(w io.Writer, out string) error {
	if _, err := loadWeights(); err != nil {
		if errors.Is(err, upm.ErrUnsupported) {
			fmt.Fprintf(w, "nothing to profile: %v\n\n%s", err, upm.Diagnose())
			return nil
		}
		return err
	}
	if _, err := buildTable(); err != nil {
		return err
	}

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := upm.WriteProfile(f); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}

	// Read the profile back, as pprof would, and show its samples.
	f, err = os.Open(out)
	if err != nil {
		return err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "wrote %s: %d samples (%s, %s)\n", out, len(p.Sample), p.SampleType[0].Type, p.SampleType[1].Type)
	for _, s := range p.Sample {
		fmt.Fprintf(w, "  %-40s %9d bytes advised, %9d merged  %v\n", s.Location[0].Line[0].Function.Name, s.Value[0], s.Value[1], s.Label)
	}
	fmt.Fprintf(w, "\nsee it with:\n  go tool pprof -top %s\n  go tool pprof -top -sample_index=merged %s\n  go tool pprof -tags %s\n", out, out, out)
	return nil
}

// weights is kept advised for the life of the process, as model weights are.
var weights []float32

// loadWeights decodes 8 MiB of "weights" on the heap and advises them.
func loadWeights() (*upm.Region, error) {
	weights = make([]float32, 2<<20)
	for i := range weights {
		weights[i] = float32(math.Cos(float64(i)))
	}
	return upm.AdviseSlice(weights)
}

// buildTable fills a 2 MiB table in an arena and seals it.
func buildTable() (*upm.Region, error) {
	a, err := upm.NewArena(2 << 20)
	if err != nil {
		return nil, err
	}
	t, err := upm.ArenaSlice[uint64](a, a.Cap()/8)
	if err != nil {
		return nil, err
	}
	for i := range t {
		t[i] = uint64(i) * 0x9e3779b97f4a7c15
	}
	return a.Seal()
}
