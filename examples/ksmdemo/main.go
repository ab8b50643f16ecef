// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Command ksmdemo shows page merging at work on this machine: it starts
// several instances of itself that each load the same data and advise it
// with package upm, then prints how much of it the kernel merged, second by
// second.
//
//	go run ./examples/ksmdemo -size 64 -instances 4 -duration 10s
//
// On a UPM kernel the data is merged as each instance advises it. On a stock
// kernel KSM merges it in the background, and only while ksmd runs; ksmdemo
// never changes KSM's settings, and says what to change when nothing can
// merge.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/upm-project/upm"
)

// childEnv marks an instance process.
const childEnv = "KSMDEMO_INSTANCE"

func main() {
	log.SetFlags(0)
	log.SetPrefix("ksmdemo: ")
	size := flag.Int("size", 64, "MiB of data each instance loads")
	instances := flag.Int("instances", 4, "number of instances")
	duration := flag.Duration("duration", 10*time.Second, "how long to watch after the last instance started")
	mode := flag.String("mode", "heap", "where instances hold the data: heap (Advise), arena (NewArena and Seal) or file (AdviseFile)")
	file := flag.String("file", "", "data file of -mode file (made in the temporary directory if empty)")
	flag.Parse()

	if os.Getenv(childEnv) != "" {
		if err := instance(*mode, *size<<20, *file); err != nil {
			log.Fatalf("instance %s: %v", os.Getenv(childEnv), err)
		}
		return
	}
	switch {
	case *size <= 0 || *instances <= 0 || *duration < 0:
		log.Fatal("-size and -instances must be positive, -duration not negative")
	case *mode != "heap" && *mode != "arena" && *mode != "file":
		log.Fatalf("-mode %q: want heap, arena or file", *mode)
	}
	if err := run(*mode, *size<<20, *instances, *duration, *file); err != nil {
		log.Fatal(err)
	}
}

func run(mode string, size, instances int, duration time.Duration, file string) error {
	d := upm.Diagnose()
	fmt.Printf("backend: %s\n%s\n", upm.CurrentBackend(), d)
	if err := upm.BackendReason(); err != nil {
		return fmt.Errorf("nothing to show here: %w", err)
	}
	if upm.CurrentBackend() == upm.BackendKSM && d.KSMRun != 1 {
		fmt.Println("KSM will not merge anything while ksmd is not running; the numbers below stay at zero.")
		fmt.Println("To watch it merge, start ksmd as root: echo 1 > /sys/kernel/mm/ksm/run (the VM demo, make demo, does).")
		fmt.Println()
	}

	if mode == "file" && file == "" {
		dir, err := os.MkdirTemp("", "ksmdemo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		file = filepath.Join(dir, "weights.bin")
		if err := os.WriteFile(file, data(size), 0o644); err != nil {
			return err
		}
	}

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var children []*child
	defer func() {
		for _, c := range children {
			c.stop()
		}
	}()
	fmt.Printf("starting %d instances, each with the same %d MiB (%s)\n", instances, size>>20, mode)
	for i := range instances {
		c, err := start(exe, i+1, mode, size, file)
		if err != nil {
			return err
		}
		children = append(children, c)
		fmt.Printf("  instance %d: advised in %v, %s merged when Advise returned\n", i+1, c.adviseTime.Round(time.Microsecond), mib(c.mergedAtStart))
	}

	before, _ := upm.ReadSystemStats()
	fmt.Printf("\n%6s  %-22s  %10s  %10s  %s\n", "time", "merged (all instances)", "Pss (all)", "KSM saves", "UPM pages merged")
	started := time.Now()
	for {
		elapsed := time.Since(started)
		var merged, pss int64
		for _, c := range children {
			m, p, err := c.report()
			if err != nil {
				return err
			}
			merged += m
			pss += p
		}
		sys, err := upm.ReadSystemStats()
		if err != nil {
			return err
		}
		upmMerged := "-"
		if sys.UPM.Present {
			upmMerged = strconv.FormatUint(sys.UPM.PagesMergedNew+sys.UPM.PagesMergedStable-before.UPM.PagesMergedNew-before.UPM.PagesMergedStable, 10)
		}
		fmt.Printf("%5.1fs  %9s of %9s  %10s  %10s  %s\n", elapsed.Seconds(), mib(merged), mib(int64(size*instances)), mib(pss), mib(sys.KSM.SavedBytes()), upmMerged)
		if elapsed >= duration {
			break
		}
		time.Sleep(min(time.Second, duration-elapsed))
	}
	return nil
}

// data returns the demo's data: size bytes, the same in every instance, and
// not zero, which KSM could treat specially.
func data(size int) []byte {
	var seed [32]byte
	copy(seed[:], "ksmdemo")
	b := make([]byte, size)
	rand.NewChaCha8(seed).Read(b)
	return b
}

// instance is the program of one instance: it advises the data, then answers
// "report" lines on standard input until it closes.
func instance(mode string, size int, file string) error {
	var region *upm.Region
	start := time.Now()
	switch mode {
	case "heap":
		buf := data(size)
		start = time.Now()
		r, err := upm.Advise(buf)
		if err != nil {
			return err
		}
		region = r
	case "arena":
		a, err := upm.NewArena(size)
		if err != nil {
			return err
		}
		defer a.Close()
		copy(a.Bytes(), data(size))
		start = time.Now()
		if region, err = a.Seal(); err != nil {
			return err
		}
	case "file":
		m, err := upm.AdviseFile(file)
		if err != nil {
			return err
		}
		defer m.Close()
		region = m.Region()
	}
	took := time.Since(start)
	merged, _, err := region.Merged()
	if err != nil {
		return err
	}
	fmt.Printf("ready %d %d\n", took, merged)

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		// Give the garbage of earlier reports back to the system, so
		// that Pss shows the data rather than the garbage collector's
		// pacing.
		debug.FreeOSMemory()
		merged, _, err := region.Merged()
		if err != nil {
			return err
		}
		stats, err := upm.ReadProcessStats()
		if err != nil {
			return err
		}
		fmt.Printf("merged %d %d\n", merged, stats.Pss)
	}
	return in.Err()
}

// child is a running instance.
type child struct {
	cmd           *exec.Cmd
	stdin         io.WriteCloser
	stdout        *bufio.Reader
	adviseTime    time.Duration
	mergedAtStart int64
}

func start(exe string, n int, mode string, size int, file string) (*child, error) {
	cmd := exec.Command(exe, "-mode", mode, "-size", strconv.Itoa(size>>20), "-file", file)
	cmd.Env = append(os.Environ(), childEnv+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout)}
	var took int64
	if err := c.scan("ready %d %d", &took, &c.mergedAtStart); err != nil {
		c.stop()
		return nil, fmt.Errorf("instance %d: %w", n, err)
	}
	c.adviseTime = time.Duration(took)
	return c, nil
}

// scan reads one line of the instance's output.
func (c *child) scan(format string, args ...any) error {
	line, err := c.stdout.ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("exited early")
		}
		return err
	}
	_, err = fmt.Sscanf(strings.TrimSpace(line), format, args...)
	return err
}

// report asks the instance for its merged bytes and its Pss.
func (c *child) report() (merged, pss int64, err error) {
	if _, err := io.WriteString(c.stdin, "report\n"); err != nil {
		return 0, 0, err
	}
	err = c.scan("merged %d %d", &merged, &pss)
	return merged, pss, err
}

// stop ends the instance by closing its input, and waits for it.
func (c *child) stop() {
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		log.Printf("instance: %v", err)
	}
}

// mib formats bytes as MiB.
func mib(n int64) string {
	return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
}
