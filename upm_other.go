// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package upm

import "runtime"

func systemProbe() probe {
	return probe{goos: runtime.GOOS}
}
