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
	keepPageCache bool
	maxSize       int64
}

// KeepPageCache makes AdviseFile leave the file's page cache alone, for files
// that other processes map in place.
func KeepPageCache() FileOption {
	return func(o *fileOptions) { o.keepPageCache = true }
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
// memory read-only and advises it as Advise does, then drops the file's page
// cache (posix_fadvise POSIX_FADV_DONTNEED) so that, across instances, the one
// merged copy is all that remains. Pages of the cache that another process
// maps or that are dirty stay; KeepPageCache keeps all of them.
//
// The memory is mapped without transparent huge pages, which would have to
// be split before they could merge. With BackendUPM the file's pages are
// merged with the copies of other instances before AdviseFile returns.
//
// AdviseFile fails with an error wrapping ErrUnsupported where CurrentBackend
// cannot merge pages (read the file with os.ReadFile there), with one wrapping
// ErrTooSmall for an empty file, and with the os package's errors for a file
// that cannot be opened (errors.Is(err, fs.ErrNotExist), fs.ErrPermission).
// It reads only regular files, and fails if the file shrinks while it reads.
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
