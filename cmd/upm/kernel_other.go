// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package main

// kernelRelease is the Linux kernel's release; there is none here.
func kernelRelease() string { return "" }
