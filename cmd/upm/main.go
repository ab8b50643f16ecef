// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Command upm shows what page merging does on this node, for operators.
//
// Usage:
//
//	upm status [-o table|json]    backend, KSM settings, UPM counters, memory saved
//	upm domains [-o table|json]   each merge domain's figures (UPM kernel, root)
//	upm help                      this text
//
// Install it with go install github.com/upm-project/upm/cmd/upm@latest.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// errUsage marks a mistake in the command line: exit status 2, as flag does.
var errUsage = errors.New("usage")

const usage = `upm shows what page merging does on this node.

Usage:

	upm status [-o table|json]    backend, KSM settings, UPM counters, memory saved
	upm domains [-o table|json]   each merge domain's figures (UPM kernel; root only)
	upm help                      this text
`

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "upm:", err)
		os.Exit(1)
	}
}

// run is the whole command, with its output streams, for tests.
func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "status", "domains":
	default:
		fmt.Fprintf(stderr, "upm: unknown command %q\n\n%s", cmd, usage)
		return errUsage
	}
	fs := flag.NewFlagSet("upm "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	format := fs.String("o", "table", "output format: table or json")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "upm %s: unexpected argument %q\n", cmd, fs.Arg(0))
		return errUsage
	}
	if *format != "table" && *format != "json" {
		fmt.Fprintf(stderr, "upm %s: -o %q: want table or json\n", cmd, *format)
		return errUsage
	}
	switch cmd {
	case "status":
		return status(stdout, *format)
	default:
		return domains(stdout, *format)
	}
}

// writeJSON writes v indented, for scripts (-o json).
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
