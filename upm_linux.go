// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package upm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Where the kernel describes KSM and UPM.
const (
	sysKSMDir     = "/sys/kernel/mm/ksm"
	sysUPMDir     = "/sys/kernel/mm/upm"
	sysUPMAdvice  = sysUPMDir + "/advice"
	procSmaps     = "/proc/self/smaps"
	procKSMStat   = "/proc/self/ksm_stat"
	procPagemap   = "/proc/self/pagemap"
	procKPageFlag = "/proc/kpageflags"
)

func systemProbe() probe {
	return probe{
		goos:      "linux",
		upmAdvice: func() (int, error) { return readAdvice(sysUPMAdvice) },
		ksm:       func() error { return probeKSM(sysKSMDir) },
	}
}

// readAdvice reads the madvise advice number of MADV_UPM_MERGE from path. The
// number is the kernel's to choose, so it is never compiled in. A missing
// file is a conclusive "no UPM"; a file that cannot be read is not.
func readAdvice(path string) (int, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, absent("%w", err)
	}
	if err != nil {
		return 0, err
	}
	advice, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	if advice <= 0 {
		return 0, fmt.Errorf("read %s: advice %d is not a positive number", path, advice)
	}
	return advice, nil
}

// probeKSM asks the kernel whether it has KSM: the sysfs directory exists and
// madvise knows KSM's advice.
//
// It asks with MADV_UNMERGEABLE on a throwaway page that was never
// mergeable, which a kernel with KSM accepts and does nothing for, and a
// kernel without it refuses (EINVAL). MADV_MERGEABLE, even on a page
// unmapped at once, would register the whole process with ksmd
// (MMF_VM_MERGEABLE, an mm_slot ksmd visits on every pass) for the rest of
// its life.
func probeKSM(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return absent("no %s: kernel built without CONFIG_KSM", dir)
		}
		return err
	}
	page, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("map a probe page: %w", err)
	}
	defer unix.Munmap(page)
	err = madvise(page, unix.MADV_UNMERGEABLE)
	if errors.Is(err, unix.EINVAL) {
		return absent("madvise refuses KSM's advice (%w): kernel built without CONFIG_KSM", err)
	}
	if err != nil {
		return fmt.Errorf("MADV_UNMERGEABLE: %w", err)
	}
	return nil
}
