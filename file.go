// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"fmt"
	"sync"
)

// FileOption configures AdviseFile.
type FileOption func(*fileOptions)

type fileOptions struct {
	dropPageCache bool
	maxSize       int64
}

// DropPageCache makes AdviseFile drop the file's page cache once the copy is
// made (posix_fadvise POSIX_FADV_DONTNEED), so that the cached pages do not
// double the memory the copy takes.
//
// The page cache is the system's, not the caller's: dropping it evicts the
// file for every reader, and the next instance to start reads it from disk
// again. Use it for a file that is read once by one process per machine, or
// from a file system whose cache no other instance will use. Pages that
// another process maps, or that are dirty, stay. A failure to drop the cache
// does not fail AdviseFile.
func DropPageCache() FileOption {
	return func(o *fileOptions) { o.dropPageCache = true }
}

// MaxFileSize makes AdviseFile refuse files larger than n bytes, before it
// allocates memory for them.
func MaxFileSize(n int64) FileOption {
	return func(o *fileOptions) { o.maxSize = n }
}

// Mapping is file data in memory, from AdviseFile or MapFile. It is safe for
// concurrent use.
type Mapping struct {
	mu     sync.Mutex
	mem    []byte // the whole mapping; nil when empty or closed
	size   int    // bytes of the file
	path   string
	region *Region
	closed bool
}

// AdviseFile reads the file at path into private anonymous memory, makes the
// memory read-only and advises it as Advise does. It is for data that must
// be merged across instances that do not share one page cache for the file,
// or that is read once and decoded: with BackendUPM the copy is merged with
// the copies of other instances before AdviseFile returns. Where all
// instances read the same file from one page-cache file system and the
// format is usable as it lies on disk, MapFile shares the page cache itself
// with no copy at all.
//
// The file's page cache is left alone: the next instance that starts reads
// the file from memory rather than disk, which serves a cold start best.
// DropPageCache drops it for a file no one else will read.
//
// The memory is mapped without transparent huge pages, which would have to
// be split before they could merge.
//
// AdviseFile fails with an error wrapping ErrUnsupported where CurrentBackend
// cannot merge pages (read the file with os.ReadFile there), with one wrapping
// ErrTooSmall for an empty file, and with the os package's errors for a file
// that cannot be opened (errors.Is(err, fs.ErrNotExist), fs.ErrPermission).
// It reads only regular files, and fails if the file shrinks while it reads.
// If the kernel fails to advise the copy, AdviseFile unmaps it and returns
// the *AdviseError: the copy is private, so no other Region is affected.
func AdviseFile(path string, opts ...FileOption) (*Mapping, error) {
	var o fileOptions
	for _, opt := range opts {
		opt(&o)
	}
	return adviseFile(path, o, callers())
}

// MapFile maps the file at path read-only into memory (mmap MAP_PRIVATE),
// without copying it. The pages are the file's page cache, shared with every
// process that maps or reads the file; they are not advised, and Region
// returns nil. MapFile works on any Linux kernel, whatever the backend.
//
// It is right when every instance reads the same file through one page
// cache: one file system on one machine, including a container image layer
// on overlayfs, whose files share the lower layer's page cache across
// containers. It is not when each instance has its own copy of the file (a
// file per deployment, a network file system with per-client caches), or
// when the data must be decoded before use: AdviseFile is for those.
//
// The file may be removed or replaced while mapped. Truncating it makes
// access past its new end fault with SIGBUS, as with any mmap.
func MapFile(path string) (*Mapping, error) {
	return mapFile(path)
}

// Bytes returns the file's data, or nil after Close. The memory is read-only:
// a write to it faults (SIGSEGV), and so does any access after Close.
func (m *Mapping) Bytes() []byte {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	if m.mem == nil {
		return []byte{}
	}
	return m.mem[:m.size:m.size]
}

// Len returns the size of the file's data in bytes.
func (m *Mapping) Len() int {
	if m == nil {
		return 0
	}
	return m.size
}

// Region returns the advised memory of an AdviseFile Mapping, which spans the
// data rounded up to whole pages, or nil for a MapFile Mapping.
func (m *Mapping) Region() *Region {
	if m == nil {
		return nil
	}
	return m.region
}

// Close unmaps the memory. Slices from Bytes must not be used afterwards.
// Unmapping releases merged pages without copying them. A second Close
// returns an error wrapping ErrClosed and does nothing else.
func (m *Mapping) Close() error {
	if m == nil {
		return fmt.Errorf("upm: close nil Mapping: %w", ErrClosed)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("upm: close mapping of %s: %w", m.path, ErrClosed)
	}
	m.closed = true
	if m.region != nil {
		m.region.release()
	}
	if m.mem == nil {
		return nil
	}
	mem := m.mem
	m.mem = nil
	if err := munmap(mem); err != nil {
		return fmt.Errorf("upm: close mapping of %s: %w", m.path, err)
	}
	return nil
}
