// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Command arena builds a lookup table off the Go heap in a upm.Arena, seals
// it (advised as shareable, made read-only), uses it, and shows that a write
// after Seal faults instead of silently unsharing the page, in a child
// process so that this one survives:
//
//	go run ./examples/arena
//
// It needs no root and changes no setting.
package main

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"

	"github.com/upm-project/upm"
)

// childEnv makes the program the child that writes after Seal.
const childEnv = "ARENA_EXAMPLE_WRITE_AFTER_SEAL"

// faulted is the child's exit code when its write faulted.
const faulted = 3

func main() {
	log.SetFlags(0)
	log.SetPrefix("arena: ")
	if os.Getenv(childEnv) != "" {
		os.Exit(child())
	}
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// buildTable fills a table of 1 Mi CRC-32 values (4 MiB, the same in every
// process) in a new arena and seals it.
func buildTable() (*upm.Arena, []uint32, *upm.Region, error) {
	const n = 1 << 20
	a, err := upm.NewArena(n * 4)
	if err != nil {
		return nil, nil, nil, err
	}
	table, err := upm.ArenaSlice[uint32](a, n)
	if err != nil {
		a.Close()
		return nil, nil, nil, err
	}
	var b [4]byte
	for i := range table {
		b[0], b[1], b[2], b[3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)
		table[i] = crc32.ChecksumIEEE(b[:])
	}
	region, err := a.Seal()
	return a, table, region, err
}

// run builds and seals the table, then has a child process write to its own
// sealed table, and reports on w.
func run(w io.Writer) error {
	a, table, region, err := buildTable()
	switch {
	case errors.Is(err, upm.ErrUnsupported):
		fmt.Fprintf(w, "Seal: %v\nThe arena stays writable and unshared where nothing can merge pages; on a\nLinux kernel with KSM or UPM, Seal makes it read-only and a write faults.\n", err)
		return a.Close()
	case err != nil:
		if a != nil {
			a.Close()
		}
		return err
	}
	defer a.Close()
	fmt.Fprintf(w, "sealed a %d-byte arena at %#x (backend %s); table[42] = %#08x\n",
		region.Len(), region.Addr(), region.Backend(), table[42])

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var out strings.Builder
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	fmt.Fprint(w, out.String())
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && exit.ExitCode() == faulted:
		fmt.Fprintln(w, "as it should: a sealed arena is read-only (SIGSEGV on write), so shared pages never change behind the sharers' backs")
		return nil
	case err != nil:
		return fmt.Errorf("child: %w", err)
	default:
		return errors.New("the child wrote to a sealed arena without a fault")
	}
}

// child builds its own sealed table and writes to it; it returns faulted
// when the write faults, as it should.
func child() (code int) {
	a, table, _, err := buildTable()
	if err != nil {
		fmt.Printf("child: %v\n", err)
		return 1
	}
	defer a.Close()
	// The Go runtime turns a fault at a non-heap address into a panic that
	// can be recovered once SetPanicOnFault is set.
	debug.SetPanicOnFault(true)
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(interface{ Addr() uintptr }); ok {
				fmt.Printf("child: the write to %#x faulted: %v\n", f.Addr(), r)
			} else {
				fmt.Printf("child: the write faulted: %v\n", r)
			}
			code = faulted
		}
	}()
	table[42] = 0
	fmt.Println("child: the write went through")
	return 0
}
