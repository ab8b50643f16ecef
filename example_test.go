// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build linux

package upm_test

import (
	"errors"
	"fmt"
	"hash/crc32"
	"log"
	"os"
	"path/filepath"

	"github.com/upm-project/upm"
)

func ExampleAdvise() {
	// Weights decoded on the Go heap, identical in every instance.
	weights := make([]byte, 8<<20)
	for i := range weights {
		weights[i] = byte(i * 7)
	}

	region, err := upm.Advise(weights)
	if errors.Is(err, upm.ErrUnsupported) {
		log.Printf("weights are not shared: %v", err)
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer region.Unadvise()

	merged, exact, err := region.Merged()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d of %d bytes merged (exact: %t) by %s\n", merged, region.Len(), exact, region.Backend())
}

func ExampleAdviseFile() {
	path := filepath.Join(os.TempDir(), "model.bin")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		log.Fatal(err)
	}
	defer os.Remove(path)

	model, err := upm.AdviseFile(path)
	if errors.Is(err, upm.ErrUnsupported) {
		log.Print(upm.Diagnose())
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer model.Close()

	// model.Bytes() is read-only: decode from it, write elsewhere.
	fmt.Println(len(model.Bytes()), "bytes advised by", model.Region().Backend())
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
	copy(table, crc32.MakeTable(crc32.IEEE)[:])

	// ...then share it and make it read-only. Where nothing merges, the
	// table stays writable and works all the same.
	if _, err := arena.Seal(); err != nil && !errors.Is(err, upm.ErrUnsupported) {
		log.Fatal(err)
	}
	fmt.Printf("%#08x\n", table[1])
	// Output: 0x77073096
}

func ExampleDiagnose() {
	d := upm.Diagnose()
	if !d.Merges {
		// For example: "ksmd is stopped (/sys/kernel/mm/ksm/run is 0):
		// advised pages are only marked mergeable, and nothing is merged
		// until an administrator starts it with: echo 1 > ..."
		log.Print(d)
	}
}

func ExampleWriteProfile() {
	f, err := os.Create(filepath.Join(os.TempDir(), "upm.pb.gz"))
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	// Then: go tool pprof -top -sample_index=merged upm.pb.gz
	if err := upm.WriteProfile(f); err != nil {
		log.Fatal(err)
	}
}
