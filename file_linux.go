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
	// before Stat could refuse it; for regular files it changes nothing.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
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
	return f, int(fi.Size()), nil
}

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
	if err := sysAdvise(mem, d); err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	if err := protect(mem, false); err != nil {
		return fail(err)
	}
	if !o.keepPageCache {
		// The copy is made; the cached pages would double the memory.
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			return fail(fmt.Errorf("drop page cache: fadvise: %w", err))
		}
	}
	return &Mapping{
		mem:    mem,
		size:   size,
		path:   path,
		region: newRegion(mem, d.backend, kindFile, path, stack, nil),
	}, nil
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
