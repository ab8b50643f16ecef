// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// helperEnv names the helper a re-executed test binary runs instead of the
// tests; see TestMain.
const helperEnv = "UPM_TEST_HELPER"

// needsUPM is the skip message of tests that need a UPM kernel.
const needsUPM = "needs the UPM kernel: run make test"

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(runHelper(name))
	}
	os.Exit(m.Run())
}

// helpers are the programs a test runs in a child process, by name.
var helpers = map[string]func() error{
	"seal-write":     helperSealWrite,
	"file-write":     helperFileWrite,
	"backend-report": helperBackendReport,
	"upm-hold":       helperUPMHold,
}

func runHelper(name string) int {
	h, ok := helpers[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "no test helper %q\n", name)
		return 3
	}
	if err := h(); err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", name, err)
		return 1
	}
	return 0
}

// helperCommand returns a command that runs the named helper in a copy of the
// test binary, with the extra environment variables env.
func helperCommand(t *testing.T, name string, env ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + name}, env...)...)
	return cmd
}

// requireMerging skips the test unless this system has a backend that can
// advise memory.
func requireMerging(t *testing.T) {
	t.Helper()
	if err := BackendReason(); err != nil {
		t.Skipf("needs KSM or UPM: %v", err)
	}
}

// requireUPM skips the test unless the kernel merges synchronously.
func requireUPM(t *testing.T) {
	t.Helper()
	if CurrentBackend() != BackendUPM || BackendReason() != nil {
		t.Skip(needsUPM)
	}
}

// withDetection makes the package use d as the detected backend until the
// test ends. Tests that use it must not run in parallel.
func withDetection(t *testing.T, d detection) {
	t.Helper()
	detectMu.Lock()
	saved := detected
	detected = &d
	detectMu.Unlock()
	t.Cleanup(func() {
		detectMu.Lock()
		detected = saved
		detectMu.Unlock()
	})
}

// withProbe makes the package probe with p, from a clean slate, until the
// test ends.
func withProbe(t *testing.T, p func() probe) {
	t.Helper()
	detectMu.Lock()
	saved, savedProbe := detected, probeSystem
	detected, probeSystem = nil, p
	detectMu.Unlock()
	t.Cleanup(func() {
		detectMu.Lock()
		detected, probeSystem = saved, savedProbe
		detectMu.Unlock()
	})
}

// mmapPages maps n pages of private anonymous memory, without transparent
// huge pages, unmapped when the test ends.
func mmapPages(t *testing.T, n int) []byte {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, n*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	require.NoError(t, err)
	_ = unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem
}

// vmaAt returns the mapping of /proc/self/smaps that holds addr.
func vmaAt(t *testing.T, addr uintptr) vma {
	t.Helper()
	vmas, err := readSmaps()
	require.NoError(t, err)
	for _, v := range vmas {
		if v.start <= addr && addr < v.end {
			return v
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return vma{}
}

// mergeable reports whether the page at addr is in a VM_MERGEABLE mapping.
func mergeable(t *testing.T, addr uintptr) bool {
	t.Helper()
	v := vmaAt(t, addr)
	return v.hasFlag("mg")
}

// pattern returns n bytes of pseudo-random data that depend only on seed.
func pattern(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// residentPages counts the pages of the file at path that are in the page
// cache, with mincore on a fresh shared mapping of it.
func residentPages(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(t, err)
	mem, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, err)
	defer unix.Munmap(mem)
	vec := make([]byte, (len(mem)+pageSize-1)/pageSize)
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0])))
	require.Zero(t, errno, "mincore")
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// diskTempDir returns a temporary directory on a file system with a page
// cache that can be dropped, or skips the test.
func diskTempDir(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	require.NoError(t, err)
	var reasons []string
	for _, parent := range []string{os.TempDir(), wd} {
		var st unix.Statfs_t
		if err := unix.Statfs(parent, &st); err != nil {
			reasons = append(reasons, fmt.Sprintf("%s: %v", parent, err))
			continue
		}
		switch st.Type {
		case unix.TMPFS_MAGIC, unix.RAMFS_MAGIC:
			reasons = append(reasons, parent+" is tmpfs or ramfs, whose pages are the files themselves")
			continue
		}
		dir, err := os.MkdirTemp(parent, "upm-test-")
		if err != nil {
			reasons = append(reasons, fmt.Sprintf("%s: %v", parent, err))
			continue
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	t.Skipf("needs a directory on a disk file system to drop page cache: %s", strings.Join(reasons, "; "))
	return ""
}

// writeSyncedFile writes data to a new file in dir and flushes it to disk, so
// that its page cache is clean and can be dropped.
func writeSyncedFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	f, err := os.Create(path)
	require.NoError(t, err)
	_, err = f.Write(data)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	return path
}

// isRoot reports whether the test runs with root's powers over files.
func isRoot() bool { return os.Geteuid() == 0 }

// droppedEnv marks a test binary that runPrivilegesDropped re-executed.
const droppedEnv = "UPM_TEST_DROPPED"

// runPrivilegesDropped runs the test named name again in a copy of the test
// binary as user and group 65534 (nobody), for tests of what an unprivileged
// process sees, and reports whether the caller is that copy, which should
// then run the test's body. As root the caller should return once it gets
// false: the copy ran the test and its result is the caller's. Not as root,
// it runs the body itself.
func runPrivilegesDropped(t *testing.T, name string) (runBody bool) {
	t.Helper()
	if os.Getenv(droppedEnv) != "" || !isRoot() {
		return true
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	// The build directory is root's alone: copy the binary where nobody
	// can execute it.
	dir, err := os.MkdirTemp(execDirForAll(t), "upm-dropped-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	data, err := os.ReadFile(exe)
	require.NoError(t, err)
	copyPath := filepath.Join(dir, "upm.test")
	require.NoError(t, os.WriteFile(copyPath, data, 0o755))

	cmd := exec.Command(copyPath, "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), droppedEnv+"=1", "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("as uid 65534:\n%s", out)
	require.NoError(t, err, "%s failed as an unprivileged user", name)
	require.Contains(t, string(out), "--- PASS: "+name, "%s did not run as an unprivileged user", name)
	return false
}

// execDirForAll returns a directory in which a file that anyone may execute
// can be run by anyone: every directory on its path may be searched by
// others, and its file system is not mounted noexec. The temporary
// directory is the first choice; a test directory of the caller's (0700, as
// the VM rig's test runner makes them) or a noexec /tmp is not.
func execDirForAll(t *testing.T) string {
	t.Helper()
	var reasons []string
	for _, dir := range []string{os.TempDir(), "/tmp", "/var/tmp", "/dev/shm", "/"} {
		if reason := notExecForAll(dir); reason != "" {
			reasons = append(reasons, reason)
			continue
		}
		return dir
	}
	t.Fatalf("no directory where an unprivileged user may execute a copy of the test binary: %s", strings.Join(reasons, "; "))
	return ""
}

// notExecForAll says why others cannot execute files in dir, or "".
func notExecForAll(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Sprintf("%s: %v", dir, err)
	}
	if st.Flags&unix.ST_NOEXEC != 0 {
		return dir + " is mounted noexec"
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Sprintf("%s: %v", d, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Sprintf("%s (on the way to %s) is %v: others cannot search it", d, dir, fi.Mode().Perm())
		}
		if d == "/" {
			return ""
		}
	}
}

// readLine reads one line from r, without its newline.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}
