// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build linux

package upm_test

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/google/pprof/profile"
	"github.com/upm-project/upm"
)

// The examples print what upm did in words that are the same on every Linux
// host: with UPM, with KSM whether or not ksmd runs, and with UPM_BACKEND=none.

func ExampleAdvise() {
	// Weights decoded on the Go heap, identical in every instance.
	weights := make([]byte, 8<<20)
	for i := range weights {
		weights[i] = byte(i * 7)
	}

	region, err := upm.Advise(weights)
	if err != nil && !errors.Is(err, upm.ErrUnsupported) {
		log.Fatal(err)
	}
	// ErrUnsupported: nothing merges here, and the weights work as before.
	fmt.Println("usable:", err == nil || errors.Is(err, upm.ErrUnsupported))

	// Only the whole pages inside weights are advised.
	fmt.Println("whole pages inside weights:", region.Len() <= len(weights) && region.Len()%os.Getpagesize() == 0)

	// Whether the memory is merged now, later, or not, and why.
	st := region.Status()
	if st.State == upm.StateNotMerging {
		log.Printf("weights not shared: %s", st)
	}
	fmt.Println("status has a code:", st.Code != "")

	// A loader keeps the Region for the life of the process; this example
	// cleans up.
	if region != nil {
		region.Unadvise()
	}
	// Output:
	// usable: true
	// whole pages inside weights: true
	// status has a code: true
}

func ExampleAdviseFile() {
	dir, err := os.MkdirTemp("", "upm-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "model.bin")
	if err := os.WriteFile(path, bytes.Repeat([]byte("weights!"), 1<<17), 0o644); err != nil {
		log.Fatal(err)
	}

	var data []byte
	model, err := upm.AdviseFile(path)
	switch {
	case errors.Is(err, upm.ErrUnsupported):
		// Nothing merges here: read the file as usual.
		if data, err = os.ReadFile(path); err != nil {
			log.Fatal(err)
		}
	case err != nil:
		log.Fatal(err)
	default:
		defer model.Close()
		// model.Bytes() is read-only: decode from it, write elsewhere.
		data = model.Bytes()
	}
	fmt.Println(len(data), "bytes, as in the file:", bytes.Equal(data[:8], []byte("weights!")))
	// Output: 1048576 bytes, as in the file: true
}

func ExampleNewArena() {
	arena, err := upm.NewArena(64 << 10)
	if err != nil {
		log.Fatal(err)
	}
	defer arena.Close()

	// Build a table off the Go heap...
	table, err := upm.ArenaSlice[uint32](arena, 256)
	if err != nil {
		log.Fatal(err)
	}
	for i := range table {
		table[i] = uint32(i * i)
	}

	// ...then share it and make it read-only. Where nothing merges, the
	// table stays writable and works all the same.
	region, err := arena.Seal()
	if err != nil && !errors.Is(err, upm.ErrUnsupported) {
		log.Fatal(err)
	}
	fmt.Printf("%d of %d bytes used; ", arena.Len(), arena.Cap())
	fmt.Println("sealed or unsupported:", region.Len() == arena.Cap() || errors.Is(err, upm.ErrUnsupported))
	// Output: 1024 of 65536 bytes used; sealed or unsupported: true
}

func ExampleDiagnose() {
	d := upm.Diagnose()
	if d.Has(upm.CodeKSMDStopped) || d.Has(upm.CodeAloneInMergeDomain) {
		// For example: "ksmd is stopped (/sys/kernel/mm/ksm/run is 0):
		// advised pages are only marked mergeable, and nothing is merged.
		// An administrator starts it with: echo 1 > ..."
		log.Print(d)
	}
	coded := len(d.Findings) > 0
	for _, f := range d.Findings {
		coded = coded && f.Code != "" && f.Fact != ""
	}
	fmt.Println("backend:", d.Backend == upm.CurrentBackend(), "findings with codes:", coded)
	// Output: backend: true findings with codes: true
}

func ExampleWriteProfile() {
	weights := make([]byte, 4<<20)
	for i := range weights {
		weights[i] = byte(i)
	}
	region, err := upm.Advise(weights)
	if err != nil && !errors.Is(err, upm.ErrUnsupported) {
		log.Fatal(err)
	}
	defer region.Unadvise()

	// Write it to a file to read with: go tool pprof -top -sample_index=merged
	var buf bytes.Buffer
	if err := upm.WriteProfile(&buf); err != nil {
		log.Fatal(err)
	}
	p, err := profile.Parse(&buf)
	if err != nil {
		log.Fatal(err)
	}
	// One sample a live Region: this one, where it could be advised.
	fmt.Println("a sample for each region:", len(p.Sample) >= 1 || region == nil)
	fmt.Println("values:", p.SampleType[0].Type, p.SampleType[1].Type)
	// Output:
	// a sample for each region: true
	// values: advised merged
}
