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
// number is the kernel's to choose, so it is never compiled in.
func readAdvice(path string) (int, error) {
	data, err := os.ReadFile(path)
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
// MADV_MERGEABLE is accepted on a private anonymous page.
func probeKSM(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("no %s: kernel built without CONFIG_KSM", dir)
		}
		return err
	}
	page, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("map a probe page: %w", err)
	}
	defer unix.Munmap(page)
	if err := unix.Madvise(page, unix.MADV_MERGEABLE); err != nil {
		return fmt.Errorf("MADV_MERGEABLE: %w", err)
	}
	return nil
}
