// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/upm-project/upm"
)

// AdviserEnv turns the bench's test binary into an adviser: a process that
// fills an anonymous mapping with content of a seed, says it is prepared,
// advises the mapping with upm.Advise when told to, and reports what the
// call cost. BenchmarkAdvise starts them; the value is an adviserSpec in
// JSON.
const AdviserEnv = "UPM_BENCH_ADVISER"

// adviserSpec says what an adviser maps and fills.
type adviserSpec struct {
	// Bytes is the size of the mapping, a multiple of 2 MiB.
	Bytes int64 `json:"bytes"`
	// THP asks for transparent huge pages (MADV_HUGEPAGE); otherwise the
	// mapping is kept in 4 KiB pages (MADV_NOHUGEPAGE).
	THP bool `json:"thp"`
	// Seed makes the content: advisers with one seed hold the same bytes,
	// and every 4 KiB page of one mapping differs from the others, so that
	// all merging is across processes, as for model weights.
	Seed uint64 `json:"seed"`
}

// adviserPrepared is the adviser's first line: its mapping is filled.
type adviserPrepared struct {
	Prepared bool `json:"prepared"`
	// HugeBytes is how much of the mapping is in transparent huge pages
	// (AnonHugePages of /proc/self/smaps_rollup, which holds nothing else).
	HugeBytes int64 `json:"huge_bytes"`
}

// adviserResult is the adviser's second line, after its advise call.
type adviserResult struct {
	// Wall is the advise call's wall time, SysCPU its thread's system CPU
	// time in the call (getrusage RUSAGE_THREAD): UPM merges there.
	Wall   time.Duration `json:"wall_ns"`
	SysCPU time.Duration `json:"sys_cpu_ns"`
	// Returned is when the call returned, for the makespan of a burst.
	Returned time.Time `json:"returned"`
	// Err is the advise call's error, if it failed.
	Err string `json:"err,omitempty"`
}

// RunAdviser is the adviser's main: TestMain calls it when AdviserEnv is
// set, and exits with what it returns.
func RunAdviser(spec string) int {
	if err := runAdviser(spec, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "adviser: %v\n", err)
		return 1
	}
	return 0
}

func runAdviser(specJSON string, in io.Reader, out io.Writer) error {
	var spec adviserSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fmt.Errorf("%s=%q: %w", AdviserEnv, specJSON, err)
	}
	const huge = 2 << 20
	if spec.Bytes <= 0 || spec.Bytes%huge != 0 {
		return fmt.Errorf("size %d: want a positive multiple of 2 MiB", spec.Bytes)
	}
	mem, err := mapAligned(int(spec.Bytes), huge)
	if err != nil {
		return err
	}
	advice := unix.MADV_NOHUGEPAGE
	if spec.THP {
		advice = unix.MADV_HUGEPAGE
	}
	if err := unix.Madvise(mem, advice); err != nil {
		return fmt.Errorf("madvise(%d): %w", advice, err)
	}
	fillPages(mem, spec.Seed)
	enc := json.NewEncoder(out)
	if err := enc.Encode(adviserPrepared{Prepared: true, HugeBytes: anonHugeBytes()}); err != nil {
		return err
	}

	lines := bufio.NewScanner(in)
	if !lines.Scan() {
		return errors.New("stdin closed before the signal to advise")
	}
	// The call's system time is read for this thread: keep the goroutine
	// on it.
	runtime.LockOSThread()
	before := threadSysCPU()
	start := time.Now()
	_, err = upm.Advise(mem)
	returned := time.Now()
	res := adviserResult{Wall: returned.Sub(start), SysCPU: threadSysCPU() - before, Returned: returned}
	runtime.UnlockOSThread()
	if err != nil {
		res.Err = err.Error()
	}
	if err := enc.Encode(res); err != nil {
		return err
	}
	// Stay, with the memory mapped, until the harness has read the
	// counters and closes stdin.
	for lines.Scan() {
	}
	runtime.KeepAlive(mem)
	return nil
}

// mapAligned maps n bytes of private anonymous memory aligned to align, so
// that a THP-backed mapping can be all huge pages.
func mapAligned(n, align int) ([]byte, error) {
	// MmapPtr and MunmapPtr: x/sys's Munmap takes only whole mappings
	// that its Mmap made, and the slack is a part of one.
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n+align), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes: %w", n+align, err)
	}
	raw := unsafe.Slice((*byte)(p), n+align)
	skip := int((uintptr(align) - addrOf(raw)%uintptr(align)) % uintptr(align))
	// Unmap the slack on both sides; what stays is aligned.
	for _, slack := range [][]byte{raw[:skip], raw[skip+n:]} {
		if len(slack) > 0 {
			if err := unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(slack)), uintptr(len(slack))); err != nil {
				return nil, fmt.Errorf("munmap: %w", err)
			}
		}
	}
	return raw[skip : skip+n : skip+n], nil
}

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// fillPages writes pseudo-random words into mem: the same seed gives the
// same bytes, and no two 4 KiB pages of one fill are equal.
func fillPages(mem []byte, seed uint64) {
	words := unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), len(mem)/8)
	x := seed*0x9e3779b97f4a7c15 + 1
	for i := range words {
		// splitmix64: fast, and every output differs for every state.
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		words[i] = z ^ (z >> 31)
	}
}

// anonHugeBytes returns AnonHugePages of /proc/self/smaps_rollup, or -1.
func anonHugeBytes() int64 {
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "AnonHugePages:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return -1
}

// threadSysCPU returns the calling thread's system CPU time.
func threadSysCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Stime.Nano())
}

// adviser is the harness's handle on a running adviser process.
type adviser struct {
	spec     adviserSpec
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	dec      *json.Decoder
	stderr   *tailBuffer
	prepared adviserPrepared
}

// startAdviser starts an adviser of spec with backend and waits until its
// mapping is filled.
func startAdviser(spec adviserSpec, backend string) (*adviser, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	a := &adviser{spec: spec, cmd: exec.Command(self), stderr: &tailBuffer{max: 4096}}
	a.cmd.Env = append(os.Environ(), AdviserEnv+"="+string(js), "UPM_BACKEND="+backend)
	a.cmd.Stderr = a.stderr
	if a.stdin, err = a.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	a.dec = json.NewDecoder(stdout)
	if err := a.dec.Decode(&a.prepared); err != nil || !a.prepared.Prepared {
		a.stop()
		return nil, fmt.Errorf("adviser of %d MiB: no prepared line (%v): %s", spec.Bytes>>20, err, a.stderr)
	}
	return a, nil
}

// signal tells the adviser to advise now.
func (a *adviser) signal() error {
	_, err := io.WriteString(a.stdin, "advise\n")
	return err
}

// result waits for the adviser's advise call to return.
func (a *adviser) result() (adviserResult, error) {
	var r adviserResult
	if err := a.dec.Decode(&r); err != nil {
		return r, fmt.Errorf("adviser %d: no result (%v): %s", a.cmd.Process.Pid, err, a.stderr)
	}
	if r.Err != "" {
		return r, fmt.Errorf("adviser %d: advise: %s", a.cmd.Process.Pid, r.Err)
	}
	return r, nil
}

// advise signals the adviser and waits for its result.
func (a *adviser) advise() (adviserResult, error) {
	if err := a.signal(); err != nil {
		return adviserResult{}, err
	}
	return a.result()
}

// pages is the number of 4 KiB pages the adviser advises.
func (a *adviser) pages() int64 { return a.spec.Bytes / 4096 }

// stop ends the adviser: it exits when its stdin closes.
func (a *adviser) stop() {
	_ = a.stdin.Close()
	done := make(chan struct{})
	go func() {
		_ = a.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
	}
}
