//go:build linux

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package integration

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/upm-project/upm"
)

// A worker is this test binary re-executed as a separate process: one
// instance of a function that owns memory, advises it and answers questions
// about it. The test drives it line by line over stdin and stdout.
//
// Commands (one per line, answered by "ok ..." or "err ..."):
//
//	map SHARED_PAGES UNIQUE_PAGES SEED FLAGS   mmap private anonymous memory and fill it
//	advise FIRST N                             upm.Advise pages [FIRST, FIRST+N)
//	madvise ADVICE FIRST N                     raw madvise, answers the errno name
//	unadvise                                   Region.Unadvise
//	write PAGE                                 change one byte of a page
//	poke FIRST N VALUE                         set byte 100 of pages to VALUE (the same content in every worker)
//	flip FIRST N VALUE | flip off              a thread toggles byte 100 of pages between its own and VALUE, until off
//	fill FIRST N                               write pages' content again (after MADV_DONTNEED, say)
//	copy SRC DST                               give page DST the content of page SRC
//	check                                      verify every page against what it should hold
//	merged                                     Region.Merged in bytes
//	ksmpages FIRST N                           KSM pages mapped there, from pagemap and kpageflags
//	thppages FIRST N                           pages of transparent huge pages mapped there, likewise
//	stat                                       ksm_merging_pages from /proc/self/ksm_stat
//	pfns FIRST N                               the page frame each page maps (0: none), from pagemap
//	nodes FIRST N                              NUMA node of each page, counted: "NODE:COUNT ..." (move_pages)
//	move FIRST N NODE                          migrate pages to a NUMA node (move_pages, MPOL_MF_MOVE_ALL)
//	unmap FIRST N                              munmap pages
//	pin FIRST N                                hold a reference on pages (vmsplice into a pipe)
//	unpin                                      drop them (close the pipe)
//	exit
//
// FLAGS is a comma-separated list: "hugepage" (MADV_HUGEPAGE before filling),
// "sparse" (touch only even pages), "zero" (shared part left as written zeros).
const workerEnv = "UPM_INTEGRATION_WORKER"

// openGuestRoot lets every user search the guest's root directory, as on any
// installed system. The initramfs records its root with the mode of the
// host's build directory, 0700, so that a process that gave up root (the
// library's permission tests drop to uid 65534) could exec nothing.
func openGuestRoot() {
	fi, err := os.Stat("/")
	if err != nil || fi.Mode().Perm()&0o005 == 0o005 {
		return
	}
	if err := os.Chmod("/", fi.Mode().Perm()|0o755); err != nil {
		fmt.Fprintf(os.Stderr, "guest root is %v and stays so: %v\n", fi.Mode().Perm(), err)
		return
	}
	fmt.Printf("guest root was %v: made it searchable by all (0755)\n", fi.Mode().Perm())
}

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		os.Exit(runWorker(os.Stdin, os.Stdout))
	}
	if pathValue := os.Getenv(writerEnv); pathValue != "" {
		os.Exit(runWriter(pathValue))
	}
	// make vm RUN=... chooses the tests through the guest's environment.
	flag.Parse()
	if run := os.Getenv("UPM_TEST_RUN"); run != "" {
		_ = flag.Set("test.run", run)
	}
	// UPM_TEST_COUNT=N runs them N times in one boot, to chase a flaky one.
	if n := os.Getenv("UPM_TEST_COUNT"); n != "" {
		_ = flag.Set("test.count", n)
	}
	if v := os.Getenv("UPM_GO_TEST_TIMEOUT"); v != "" {
		_ = flag.Set("test.timeout", v)
	}
	if os.Getenv("VMTEST_IN_GUEST") == "1" {
		openGuestRoot()
	}
	leaks, err := startKmemleak()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	// After the last test every process the tests started has exited:
	// whatever KSM or UPM allocated for them must be gone.
	report, err := leaks.report()
	switch {
	case err != nil:
		fmt.Fprintln(os.Stderr, err)
		code = 1
	case report != "":
		fmt.Printf("FAIL: kmemleak found unreferenced objects:\n%s\n", report)
		code = 1
	case leaks.enabled:
		fmt.Println("kmemleak: no leaks found after the tests")
	}
	os.Exit(code)
}

const pageSize = 4096

// fillPage writes the content page index i of a stream with seed has. The
// shared part of every worker uses the same seed, so it is identical across
// workers and distinct from page to page.
func fillPage(p []byte, seed uint64, i int) {
	x := seed*0x9E3779B97F4A7C15 + uint64(i)*0xBF58476D1CE4E5B9 + 1
	for off := 0; off < len(p); off += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[off:], x)
	}
}

type workerState struct {
	mem     []byte
	shared  int
	unique  int
	seed    uint64
	flags   map[string]bool
	region  *upm.Region
	written map[int]byte
	unmaped map[int]bool
	// copies maps a page to the page whose content it was given.
	copies map[int]int
	// hammer, while set, is the loop that keeps the process's mmap_lock
	// taken for write.
	hammer *loop
	// pins is the pipe whose buffers hold references on pinned pages.
	pins [2]int
	// flip, while set, is the loop that toggles pages' content.
	flip *loop
}

// expected returns what page i should hold, or nil for an untouched page.
func (w *workerState) expected(i int) []byte {
	if src, ok := w.copies[i]; ok {
		return w.expected(src)
	}
	p := make([]byte, pageSize)
	if w.flags["sparse"] && i%2 == 1 {
		return p // never written: reads as zero
	}
	switch {
	case i < w.shared && w.flags["zero"]:
	case i < w.shared:
		fillPage(p, 1, i)
	default:
		fillPage(p, w.seed, i)
	}
	if v, ok := w.written[i]; ok {
		p[100] = v
	}
	return p
}

func runWorker(in io.Reader, out io.Writer) int {
	w := &workerState{written: map[int]byte{}, unmaped: map[int]bool{}, copies: map[int]int{}}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		reply, err := w.do(f)
		if err != nil {
			fmt.Fprintf(out, "err %v\n", strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Fprintf(out, "ok %s\n", reply)
		}
		if f[0] == "exit" {
			return 0
		}
	}
	return 0
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

func (w *workerState) pages(first, n int) []byte {
	return w.mem[first*pageSize : (first+n)*pageSize]
}

func (w *workerState) do(f []string) (string, error) {
	switch f[0] {
	case "map":
		w.shared, w.unique = atoi(f[1]), atoi(f[2])
		w.seed, _ = strconv.ParseUint(f[3], 10, 64)
		w.flags = map[string]bool{}
		if len(f) > 4 {
			for _, fl := range strings.Split(f[4], ",") {
				w.flags[fl] = true
			}
		}
		total := (w.shared + w.unique) * pageSize
		align := 0
		if w.flags["hugepage"] {
			align = 2 << 20
		}
		mem, err := unix.Mmap(-1, 0, total+align, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return "", err
		}
		if align > 0 {
			// Start on a huge-page boundary so THPs can back it.
			addr := uintptrOf(mem)
			skip := int((uintptr(align) - addr%uintptr(align)) % uintptr(align))
			mem = mem[skip : skip+total]
			if err := unix.Madvise(mem, unix.MADV_HUGEPAGE); err != nil {
				return "", fmt.Errorf("MADV_HUGEPAGE: %w", err)
			}
		}
		w.mem = mem
		for i := 0; i < w.shared+w.unique; i++ {
			if w.flags["sparse"] && i%2 == 1 {
				continue
			}
			copy(w.pages(i, 1), w.expected(i))
		}
		return fmt.Sprint(addrOf(w.mem)), nil
	case "advise":
		r, err := upm.Advise(w.pages(atoi(f[1]), atoi(f[2])))
		if r != nil {
			// A failed Advise returns the Region that owns what the
			// kernel advised before it failed.
			w.region = r
		}
		if err != nil {
			return "", err
		}
		w.region = r
		return r.Backend().String(), nil
	case "madvise":
		err := unix.Madvise(w.pages(atoi(f[2]), atoi(f[3])), atoi(f[1]))
		if err == nil {
			return "0", nil
		}
		var errno unix.Errno
		if errors.As(err, &errno) {
			return unix.ErrnoName(errno), nil
		}
		return "", err
	case "madvise-at":
		// madvise at an address and length of our choosing (misaligned, say).
		addr, _ := strconv.ParseUint(f[2], 0, 64)
		_, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(addr), uintptr(atoi(f[3])), uintptr(atoi(f[1])))
		if e == 0 {
			return "0", nil
		}
		return unix.ErrnoName(e), nil
	case "unadvise":
		if w.region == nil {
			return "", errors.New("nothing advised")
		}
		return "", w.region.Unadvise()
	case "write":
		i := atoi(f[1])
		v := byte(time.Now().UnixNano()) | 1
		if old, ok := w.written[i]; ok && old == v {
			v++
		}
		w.mem[i*pageSize+100] = v
		w.written[i] = v
		return "", nil
	case "poke":
		first, n, v := atoi(f[1]), atoi(f[2]), byte(atoi(f[3]))
		for i := first; i < first+n; i++ {
			w.mem[i*pageSize+100] = v
			w.written[i] = v
		}
		return "", nil
	case "flip":
		if f[1] == "off" {
			if w.flip == nil {
				return "", errors.New("no flip running")
			}
			w.flip.stop()
			w.flip = nil
			// What each page holds now is one of two contents: the
			// caller must not check it.
			return "", nil
		}
		if w.flip != nil {
			return "", errors.New("flip already running")
		}
		first, n, v := atoi(f[1]), atoi(f[2]), byte(atoi(f[3]))
		own := make([]byte, n)
		for i := range own {
			own[i] = w.expected(first + i)[100]
		}
		sweep := 0
		w.flip = startLoop(func() {
			// One byte a page, written at once: a page holds either
			// content at any moment, never a mix.
			for i := range own {
				b := own[i]
				if sweep%2 == 1 {
					b = v
				}
				w.mem[(first+i)*pageSize+100] = b
			}
			sweep++
			// Quiet moments, so that some merges complete between
			// two writes of a page.
			time.Sleep(100 * time.Microsecond)
		}, nil)
		return "", nil
	case "fill":
		first, n := atoi(f[1]), atoi(f[2])
		for i := first; i < first+n; i++ {
			copy(w.pages(i, 1), w.expected(i))
		}
		return "", nil
	case "copy":
		src, dst := atoi(f[1]), atoi(f[2])
		copy(w.pages(dst, 1), w.expected(src))
		w.copies[dst] = src
		return "", nil
	case "check":
		bad := 0
		for i := 0; i < w.shared+w.unique; i++ {
			if w.unmaped[i] {
				continue
			}
			if string(w.pages(i, 1)) != string(w.expected(i)) {
				bad++
			}
		}
		if bad > 0 {
			return "", fmt.Errorf("%d pages differ from what was written", bad)
		}
		return fmt.Sprint(w.shared + w.unique - len(w.unmaped)), nil
	case "merged":
		if w.region == nil {
			return "", errors.New("nothing advised")
		}
		n, ok, err := w.region.Merged()
		if err != nil {
			return "", err
		}
		if !ok {
			return "", errors.New("merged bytes unknown")
		}
		return fmt.Sprint(n), nil
	case "ksmpages":
		// KSM pages mapped in a range, counted by the kernel's page
		// flags rather than by the upm package.
		return pagesFlagged(w.pages(atoi(f[1]), atoi(f[2])), kpfKSM)
	case "thppages":
		return pagesFlagged(w.pages(atoi(f[1]), atoi(f[2])), kpfTHP)
	case "stat":
		b, err := os.ReadFile("/proc/self/ksm_stat")
		if err != nil {
			return "", err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "ksm_merging_pages "); ok {
				return v, nil
			}
		}
		return "", errors.New("no ksm_merging_pages in /proc/self/ksm_stat")
	case "pfns":
		pfns, err := pageFrames(w.pages(atoi(f[1]), atoi(f[2])))
		if err != nil {
			return "", err
		}
		words := make([]string, len(pfns))
		for i, pfn := range pfns {
			words[i] = strconv.FormatUint(pfn, 10)
		}
		return strings.Join(words, " "), nil
	case "nodes", "move":
		node := -1 // nodes: only ask where they are
		if f[0] == "move" {
			node = atoi(f[3])
		}
		status, err := movePages(w.pages(atoi(f[1]), atoi(f[2])), node)
		if err != nil {
			return "", err
		}
		return countNodes(status), nil
	case "unmap":
		first, n := atoi(f[1]), atoi(f[2])
		// Part of a mapping: unix.Munmap only takes whole ones.
		p := w.pages(first, n)
		if err := unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(p)), uintptr(len(p))); err != nil {
			return "", err
		}
		for i := first; i < first+n; i++ {
			w.unmaped[i] = true
		}
		return "", nil
	case "remap":
		// Move pages elsewhere with mremap, as a growing Go heap or a
		// realloc does; the moved pages must keep their content.
		first, n := atoi(f[1]), atoi(f[2])
		p := w.pages(first, n)
		dst, err := unix.Mmap(-1, 0, len(p), unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return "", err
		}
		moved, _, e := unix.Syscall6(unix.SYS_MREMAP, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)),
			uintptr(len(p)), unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, uintptr(unsafe.Pointer(unsafe.SliceData(dst))), 0)
		if e != 0 {
			return "", fmt.Errorf("mremap: %w", e)
		}
		bad := 0
		for i := 0; i < n; i++ {
			if string(dst[i*pageSize:(i+1)*pageSize]) != string(w.expected(first+i)) {
				bad++
			}
		}
		for i := first; i < first+n; i++ {
			w.unmaped[i] = true
		}
		if bad > 0 {
			return "", fmt.Errorf("%d moved pages differ from what was written", bad)
		}
		return fmt.Sprint(moved), nil
	case "hammer":
		// "hammer on" keeps this process's mmap_lock busy for write
		// (mprotect of a page of its own, flipped back and forth), as a
		// process that maps and unmaps all the time does; "hammer off"
		// stops it.
		if f[1] == "off" {
			if w.hammer == nil {
				return "", errors.New("no hammer running")
			}
			w.hammer.stop()
			w.hammer = nil
			return "", nil
		}
		if w.hammer != nil {
			return "", errors.New("hammer already running")
		}
		page, err := unix.Mmap(-1, 0, 2*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return "", err
		}
		w.hammer = startLoop(func() {
			// A different protection for one page of two splits
			// the VMA; the same for both merges it again.
			unix.Mprotect(page[:pageSize], unix.PROT_READ)
			unix.Mprotect(page[:pageSize], unix.PROT_READ|unix.PROT_WRITE)
		}, func() { unix.Munmap(page) })
		return "", nil
	case "pin":
		// A page spliced into a pipe has a reference more than its
		// mappings account for, as one under O_DIRECT I/O has: KSM
		// cannot merge it until the pipe lets go.
		if w.pins[1] != 0 {
			return "", errors.New("pages already pinned")
		}
		first, n := atoi(f[1]), atoi(f[2])
		if err := unix.Pipe2(w.pins[:], unix.O_CLOEXEC); err != nil {
			return "", err
		}
		if _, err := unix.FcntlInt(uintptr(w.pins[1]), unix.F_SETPIPE_SZ, n*pageSize); err != nil {
			return "", fmt.Errorf("F_SETPIPE_SZ: %w", err)
		}
		iovs := make([]unix.Iovec, n)
		for i := range iovs {
			iovs[i].Base = &w.pages(first+i, 1)[0]
			iovs[i].SetLen(pageSize)
		}
		spliced, err := unix.Vmsplice(w.pins[1], iovs, 0)
		if err != nil {
			return "", fmt.Errorf("vmsplice: %w", err)
		}
		if spliced != n*pageSize {
			return "", fmt.Errorf("vmsplice took %d bytes of %d", spliced, n*pageSize)
		}
		return "", nil
	case "unpin":
		if w.pins[1] == 0 {
			return "", errors.New("nothing pinned")
		}
		unix.Close(w.pins[0])
		unix.Close(w.pins[1])
		w.pins = [2]int{}
		return "", nil
	case "exit":
		return "", nil
	}
	return "", fmt.Errorf("unknown command %q", f[0])
}

// worker is the test's handle on a worker process.
type worker struct {
	t   *testing.T
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startWorker starts a worker with the given extra environment (e.g. a
// forced backend); it is killed when the test ends.
func startWorker(t *testing.T, env ...string) *worker {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), workerEnv+"=1"), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	require.NoError(t, err)
	outPipe, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	w := &worker{t: t, cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return w
}

// call sends one command and returns the reply, or the worker's error.
func (w *worker) call(format string, args ...any) (string, error) {
	w.t.Helper()
	line := fmt.Sprintf(format, args...)
	if _, err := fmt.Fprintln(w.in, line); err != nil {
		return "", fmt.Errorf("worker %d: %s: %w", w.cmd.Process.Pid, line, err)
	}
	if !w.out.Scan() {
		return "", fmt.Errorf("worker %d: %s: no reply (%v)", w.cmd.Process.Pid, line, w.out.Err())
	}
	reply := w.out.Text()
	if v, ok := strings.CutPrefix(reply, "ok"); ok {
		return strings.TrimSpace(v), nil
	}
	return "", fmt.Errorf("worker %d: %s: %s", w.cmd.Process.Pid, line, strings.TrimPrefix(reply, "err "))
}

// must is call that fails the test on an error.
func (w *worker) must(format string, args ...any) string {
	w.t.Helper()
	reply, err := w.call(format, args...)
	require.NoError(w.t, err)
	return reply
}

// mustInt is must for replies that are a number.
func (w *worker) mustInt(format string, args ...any) int64 {
	w.t.Helper()
	v, err := strconv.ParseInt(w.must(format, args...), 10, 64)
	require.NoError(w.t, err)
	return v
}

// exit asks the worker to end and waits for it.
func (w *worker) exit() {
	w.t.Helper()
	w.must("exit")
	require.NoError(w.t, w.cmd.Wait())
}

// Page flags of /proc/kpageflags (include/uapi/linux/kernel-page-flags.h).
const (
	kpfKSM = 21
	kpfTHP = 22
)

// pagesFlagged counts the pages mapped in mem whose kpageflags have flag,
// from /proc/self/pagemap and /proc/kpageflags (root only; our kernel
// carries the KPF_KSM fix).
func pagesFlagged(mem []byte, flag uint) (string, error) {
	pfns, err := pageFrames(mem)
	if err != nil {
		return "", err
	}
	kpageflags, err := os.Open("/proc/kpageflags")
	if err != nil {
		return "", err
	}
	defer kpageflags.Close()
	var n int
	var buf [8]byte
	for _, pfn := range pfns {
		if pfn == 0 {
			continue // not present
		}
		if _, err := kpageflags.ReadAt(buf[:], int64(pfn)*8); err != nil {
			return "", err
		}
		if binary.LittleEndian.Uint64(buf[:])&(1<<flag) != 0 {
			n++
		}
	}
	return strconv.Itoa(n), nil
}

// pageFrames returns the page frame number each page of mem maps, 0 for a
// page not present, from /proc/self/pagemap (root sees the frames).
func pageFrames(mem []byte) ([]uint64, error) {
	pagemap, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return nil, err
	}
	defer pagemap.Close()
	n := len(mem) / pageSize
	buf := make([]byte, 8*n)
	if _, err := pagemap.ReadAt(buf, int64(uintptrOf(mem)/pageSize)*8); err != nil {
		return nil, err
	}
	pfns := make([]uint64, n)
	for i := range pfns {
		entry := binary.LittleEndian.Uint64(buf[8*i:])
		if entry&(1<<63) != 0 {
			pfns[i] = entry & (1<<55 - 1)
		}
	}
	return pfns, nil
}

// movePages moves the pages of mem to NUMA node node with move_pages(2),
// as root with MPOL_MF_MOVE_ALL so that pages other processes map move too
// (a KSM page always has other mappers), and returns each page's status:
// its node, or a negative errno. node -1 only asks where the pages are.
func movePages(mem []byte, node int) ([]int32, error) {
	n := len(mem) / pageSize
	addrs := make([]uintptr, n)
	for i := range addrs {
		addrs[i] = uintptrOf(mem) + uintptr(i*pageSize)
	}
	status := make([]int32, n)
	var nodes []int32
	nodesPtr := uintptr(0)
	if node >= 0 {
		nodes = make([]int32, n)
		for i := range nodes {
			nodes[i] = int32(node)
		}
		nodesPtr = uintptr(unsafe.Pointer(&nodes[0]))
	}
	// The return value counts the pages left where they were; status
	// says why for each, so it is what the caller looks at.
	_, _, e := unix.Syscall6(unix.SYS_MOVE_PAGES, 0, uintptr(n), uintptr(unsafe.Pointer(&addrs[0])),
		nodesPtr, uintptr(unsafe.Pointer(&status[0])), unix.MPOL_MF_MOVE_ALL)
	runtime.KeepAlive(nodes)
	if e != 0 {
		return nil, fmt.Errorf("move_pages: %w", e)
	}
	return status, nil
}

// countNodes summarises move_pages statuses as "NODE:COUNT" words in
// ascending order of node (negative ones are errnos: -14 EFAULT, not
// mapped; -16 EBUSY, could not move).
func countNodes(status []int32) string {
	counts := map[int32]int{}
	for _, s := range status {
		counts[s]++
	}
	keys := make([]int32, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	words := make([]string, len(keys))
	for i, k := range keys {
		words[i] = fmt.Sprintf("%d:%d", k, counts[k])
	}
	return strings.Join(words, " ")
}

// loop is a goroutine on an OS thread of its own that runs a body over and
// over, beside the worker's commands, until stopped.
type loop struct {
	quit chan struct{}
}

// startLoop starts body on a locked OS thread; cleanup, if not nil, runs
// on that thread once the loop stops.
func startLoop(body, cleanup func()) *loop {
	l := &loop{quit: make(chan struct{})}
	started := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		close(started)
		for {
			select {
			case <-l.quit:
				if cleanup != nil {
					cleanup()
				}
				l.quit <- struct{}{}
				return
			default:
			}
			body()
		}
	}()
	<-started
	return l
}

// stop ends the loop and returns once its cleanup is done.
func (l *loop) stop() {
	l.quit <- struct{}{}
	<-l.quit
}
