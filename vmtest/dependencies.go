//go:build tools

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package vmtest

// The guest's initramfs is built from these commands' sources, and the
// guest runs the tests of the upm packages, so they must be in go.mod and
// go.sum; the commands are main packages, never imported for real.
import (
	_ "github.com/upm-project/upm"
	_ "github.com/upm-project/upm/bench"

	_ "github.com/hugelgupf/vmtest/vminit/gouinit"
	_ "github.com/hugelgupf/vmtest/vminit/shutdownafter"
	_ "github.com/hugelgupf/vmtest/vminit/vmmount"
	_ "github.com/u-root/u-root/cmds/core/init"
)
