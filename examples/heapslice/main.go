// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Command heapslice advises a slice on the Go heap, as a function would
// advise model weights it decoded, and prints the Region and what the
// kernel reports about it:
//
//	go run ./examples/heapslice -mib 16
//
// One process alone has nothing to share with, so expect nothing merged
// unless identical pages exist elsewhere (run two at once on a UPM kernel:
// the second merges with the first as it advises). It needs no root and
// changes no setting.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"os"
	"time"

	"github.com/upm-project/upm"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("heapslice: ")
	mib := flag.Int("mib", 16, "MiB of float32 weights to make and advise")
	flag.Parse()
	if *mib <= 0 {
		log.Fatal("-mib must be positive")
	}

	if err := run(os.Stdout, *mib); err != nil {
		log.Fatal(err)
	}
}

// run makes mib MiB of weights, advises them and reports on w.
func run(w io.Writer, mib int) error {
	// The same numbers in every run: what instances of one function load.
	weights := make([]float32, mib<<20/4)
	for i := range weights {
		weights[i] = float32(math.Sin(float64(i) / 1000))
	}

	start := time.Now()
	region, err := upm.AdviseSlice(weights)
	took := time.Since(start)
	switch {
	case errors.Is(err, upm.ErrUnsupported):
		fmt.Fprintf(w, "not advised, the program works as before: %v\n\n%s", err, upm.Diagnose())
		return nil
	case err != nil:
		return err
	}
	fmt.Fprintf(w, "advised %d of the slice's %d bytes at %#x in %v (backend %s)\n",
		region.Len(), len(weights)*4, region.Addr(), took.Round(time.Microsecond), region.Backend())
	fmt.Fprintln(w, "only whole pages inside the slice are advised: its ends are rounded inwards")

	merged, exact, err := region.Merged()
	if err != nil {
		return err
	}
	how := "a lower bound (read /proc/self/smaps; root reads page flags exactly)"
	if exact {
		how = "exact"
	}
	fmt.Fprintf(w, "merged now: %d bytes, %s\n", merged, how)

	ps, err := upm.ReadProcessStats()
	if err != nil {
		fmt.Fprintf(w, "process stats: %v\n", err)
	}
	fmt.Fprintf(w, "process: %d region(s), %d bytes advised; Rss %d KiB, Pss %d KiB; ksm_merging_pages %d, ksm_process_profit %d\n",
		ps.Regions, ps.AdvisedBytes, ps.Rss>>10, ps.Pss>>10, ps.MergingPages, ps.Profit)
	fmt.Fprintf(w, "\n%s", region.Diagnose())

	if err := region.Unadvise(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nunadvised: the pages are private again")
	return nil
}
