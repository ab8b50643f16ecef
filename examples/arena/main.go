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
	"log"
	"os"
	"os/exec"
	"runtime/debug"

	"github.com/upm-project/upm"
)

// childEnv makes the program the child that writes after Seal.
const childEnv = "ARENA_EXAMPLE_WRITE_AFTER_SEAL"

// faulted is the child's exit code when its write faulted.
const faulted = 3

func main() {
	log.SetFlags(0)
	log.SetPrefix("arena: ")
	child := os.Getenv(childEnv) != ""

	// A table of 1 Mi CRC-32 values: 4 MiB, the same in every process.
	const n = 1 << 20
	a, err := upm.NewArena(n * 4)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	table, err := upm.ArenaSlice[uint32](a, n)
	if err != nil {
		log.Fatal(err)
	}
	var b [4]byte
	for i := range table {
		b[0], b[1], b[2], b[3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)
		table[i] = crc32.ChecksumIEEE(b[:])
	}

	region, err := a.Seal()
	switch {
	case errors.Is(err, upm.ErrUnsupported):
		if child {
			os.Exit(0)
		}
		fmt.Printf("Seal: %v\nThe arena stays writable and unshared where nothing can merge pages; on a\nLinux kernel with KSM or UPM, Seal makes it read-only and a write faults.\n", err)
		return
	case err != nil:
		log.Fatal(err)
	}

	if child {
		// The Go runtime turns a fault at a non-heap address into a
		// panic that can be recovered once SetPanicOnFault is set.
		debug.SetPanicOnFault(true)
		defer func() {
			if r := recover(); r != nil {
				if f, ok := r.(interface{ Addr() uintptr }); ok {
					fmt.Printf("child: the write to %#x faulted: %v\n", f.Addr(), r)
				} else {
					fmt.Printf("child: the write faulted: %v\n", r)
				}
				os.Exit(faulted)
			}
		}()
		table[42] = 0
		fmt.Println("child: the write went through")
		os.Exit(0)
	}

	fmt.Printf("sealed a %d-byte arena at %#x (backend %s); table[42] = %#08x\n",
		region.Len(), region.Addr(), region.Backend(), table[42])
	exe, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && exit.ExitCode() == faulted:
		fmt.Println("as it should: a sealed arena is read-only (SIGSEGV on write), so shared pages never change behind the sharers' backs")
	case err != nil:
		log.Fatalf("child: %v", err)
	default:
		log.Fatal("the child wrote to a sealed arena without a fault")
	}
}
