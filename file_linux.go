// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"

	"golang.org/x/sys/unix"
)

// openRegular opens path for reading and returns it with its size, if it is a
// regular file.
func openRegular(path string) (*os.File, int, error) {
	// O_NONBLOCK, or the open of a named pipe would wait for a writer
	// before Stat could refuse it; O_NOCTTY, or opening a terminal would
	// make it ours. O_NONBLOCK is cleared once the file is known to be
	// regular, so that the read is an ordinary one.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s: not a regular file but a %s", path, fileKind(fi.Mode()))
	}
	if fi.Size() > math.MaxInt-int64(pageSize) {
		f.Close()
		return nil, 0, fmt.Errorf("%s: %d bytes do not fit in memory", path, fi.Size())
	}
	if err := setBlocking(f); err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	return f, int(fi.Size()), nil
}

// setBlocking clears O_NONBLOCK on f.
func setBlocking(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	err = rc.Control(func(fd uintptr) {
		var flags int
		if flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0); ferr == nil {
			_, ferr = unix.FcntlInt(fd, unix.F_SETFL, flags&^unix.O_NONBLOCK)
		}
	})
	if err != nil {
		return err
	}
	if ferr != nil {
		return fmt.Errorf("fcntl: %w", ferr)
	}
	return nil
}

// sysFadvise is unix.Fadvise; tests make it fail.
var sysFadvise = unix.Fadvise

// fileKind names the type of a file that is not regular.
func fileKind(mode fs.FileMode) string {
	switch {
	case mode.IsDir():
		return "directory"
	case mode&fs.ModeCharDevice != 0:
		return "character device"
	case mode&fs.ModeDevice != 0:
		return "block device"
	case mode&fs.ModeNamedPipe != 0:
		return "named pipe"
	case mode&fs.ModeSocket != 0:
		return "socket"
	default:
		return "special file"
	}
}

func adviseFile(path string, o fileOptions, stack []uintptr) (*Mapping, error) {
	d := currentDetection()
	if d.err != nil {
		return nil, fmt.Errorf("upm: advise file %s: %w", path, d.err)
	}
	f, size, err := openRegular(path)
	if err != nil {
		return nil, fmt.Errorf("upm: advise file: %w", err)
	}
	defer f.Close()
	switch {
	case size == 0:
		return nil, fmt.Errorf("upm: advise file %s: empty file: %w", path, ErrTooSmall)
	case o.maxSize > 0 && int64(size) > o.maxSize:
		return nil, fmt.Errorf("upm: advise file %s: %d bytes exceed the limit of %d", path, size, o.maxSize)
	}

	mem, err := mmapAnon(size)
	if err != nil {
		return nil, fmt.Errorf("upm: advise file %s: %w", path, err)
	}
	fail := func(err error) (*Mapping, error) {
		unix.Munmap(mem)
		return nil, fmt.Errorf("upm: advise file %s: %w", path, err)
	}
	if _, err := io.ReadFull(f, mem[:size]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("file shrank while reading: %w", err)
		}
		return fail(err)
	}
	if err := protect(mem, false); err != nil {
		return fail(err)
	}
	// The copy is private to this Mapping, so no other Region can overlap
	// it: a failed advise unmaps it whole.
	region, err := adviseMem("advise file "+path+":", mem, kindFile, path, stack)
	if err != nil {
		if region != nil {
			region.release()
		}
		unix.Munmap(mem)
		return nil, err
	}
	if o.dropPageCache {
		// The copy is made and good; a page cache that cannot be dropped
		// costs memory, not correctness, so a failure is not the call's.
		_ = sysFadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	}
	return &Mapping{mem: mem, size: size, path: path, region: region}, nil
}

func mapFile(path string) (*Mapping, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, fmt.Errorf("upm: map file: %w", err)
	}
	defer f.Close()
	if size == 0 {
		return &Mapping{path: path}, nil
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("upm: map file %s: mmap: %w", path, err)
	}
	return &Mapping{mem: mem, size: size, path: path}, nil
}
