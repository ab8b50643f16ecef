// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Command upm shows what page merging does on this node, for operators.
//
// Usage:
//
//	upm status [-o table|json]             backend, KSM settings, UPM counters, memory saved
//	upm top [-o table|json] [-n N] [-w D]  processes by memory saved
//	upm domains [-o table|json]            each merge domain's figures (UPM kernel, root)
//	upm domains mark CGROUP NAME           put CGROUP's subtree into merge domain NAME
//	upm domains unmark CGROUP              take the mark off again
//	upm doctor [-o table|json]             what keeps memory from merging, in plain words
//	upm exporter [-listen ADDR]            Prometheus metrics of the node and each domain
//	upm oci-hook                           OCI hook: a container's cgroup joins the domain its annotation names
//	upm help                               this text
//
// Install it with go install github.com/upm-project/upm/cmd/upm@latest.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// stdin is where oci-hook reads the container's state; tests replace it.
var stdin io.Reader = os.Stdin

// defaultListen is the exporter's address unless -listen says otherwise.
const defaultListen = ":9477"

// errUsage marks a mistake in the command line: exit status 2, as flag does.
var errUsage = errors.New("usage")

const usage = `upm shows what page merging does on this node.

Usage:

	upm status [-o table|json]
		backend, kernel, KSM settings, UPM counters, memory saved
	upm top [-o table|json] [-n N] [-w INTERVAL]
		processes with memory advised for merging, by memory saved:
		pid, command, cgroup, merge domain, merging pages, profit,
		advised ranges; -n shows the first N, -w redraws every INTERVAL
	upm domains [-o table|json]
		each merge domain: name or cgroup, processes, pages shared and
		sharing, candidates, index memory, bytes saved (UPM kernel; root);
		on stock KSM, which has no domains, each cgroup's processes,
		merging pages and profit, summed from /proc
	upm domains mark CGROUP NAME
		put the cgroup CGROUP and its subtree into the merge domain NAME:
		cgroups marked with one name share pages, unmarked ones share
		nothing (trusted.upm.domain; needs CAP_SYS_ADMIN)
	upm domains unmark CGROUP
		take the mark off CGROUP
	upm doctor [-o table|json]
		what keeps memory on this node from merging, in plain words, each
		finding with a stable code: the library's (upm, ksm, ksmd-stopped,
		upm-ksmd-stopped, ksm-unmerging, ksmd-idle, ksmd-running, ...) and
		node-alone-in-domain, node-domains-unknown, node-near-page-limit,
		node-ksmd-scan-time, node-processes-unreadable
	upm exporter [-listen ADDR]
		serve Prometheus metrics at http://ADDR/metrics (default :9477),
		read from the kernel at each scrape: memory saved, KSM's pages and
		ksmd's CPU time, UPM's counters (pages advised, merged, skipped,
		candidates, index memory, calls and their time, revisits) and each
		merge domain's processes, pages, candidates, index memory and
		bytes saved (upm_domain_*{domain="..."}; root only)
	upm oci-hook
		an OCI runtime hook (createRuntime): reads the container's state
		on stdin and marks its cgroup with the merge domain its
		io.upm.domain annotation names, so that every container of one
		function shares; no annotation, or a kernel without UPM: the
		container is left alone; a bad state or name: exit status 1
	upm help
		this text

CGROUP is a cgroup v2 path as /proc/PID/cgroup shows it (/kubepods/pod1)
or a directory under /sys/fs/cgroup. Root sees every process and domain;
without it each command says what it cannot see and shows what it can.
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
	case "domains":
		if len(args) > 0 && (args[0] == "mark" || args[0] == "unmark") {
			return markCommand(args[0], args[1:], stdout, stderr)
		}
	case "oci-hook":
		if len(args) > 0 {
			fmt.Fprintf(stderr, "upm oci-hook: unexpected argument %q (the state comes on stdin)\n", args[0])
			return errUsage
		}
		return ociHook(stdin, stdout, stderr)
	case "status", "top", "doctor", "exporter":
	default:
		fmt.Fprintf(stderr, "upm: unknown command %q\n\n%s", cmd, usage)
		return errUsage
	}
	fs := flag.NewFlagSet("upm "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	format := fs.String("o", "table", "output format: table or json")
	var limit *int
	var interval *time.Duration
	var listen *string
	if cmd == "exporter" {
		listen = fs.String("listen", defaultListen, "serve /metrics on `ADDR`")
	}
	if cmd == "top" {
		limit = fs.Int("n", 0, "show the first `N` processes only (0: all)")
		interval = fs.Duration("w", 0, "redraw every `INTERVAL` (e.g. 2s) until interrupted")
	}
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
	case "doctor":
		return doctor(stdout, *format)
	case "exporter":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return exporter(ctx, stderr, *listen, nil)
	case "top":
		if *limit < 0 || *interval < 0 {
			fmt.Fprintf(stderr, "upm top: -n and -w cannot be negative\n")
			return errUsage
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return top(ctx, stdout, *format, *limit, *interval)
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
