//go:build tools

// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package vmtest

// The guest's initramfs is built from these commands' sources, and the
// guest runs the tests of the upm packages, so they must be in go.mod and
// go.sum; the commands are main packages, never imported for real. The
// Prometheus packages are what internal/integration's tests import beyond
// the upm package's own dependencies (they parse upm exporter's metrics).
import (
	_ "github.com/upm-project/upm"
	_ "github.com/upm-project/upm/bench"
	_ "github.com/upm-project/upm/cmd/upm"

	_ "github.com/prometheus/client_model/go"
	_ "github.com/prometheus/common/expfmt"
	_ "github.com/prometheus/common/model"

	_ "github.com/hugelgupf/vmtest/vminit/gouinit"
	_ "github.com/hugelgupf/vmtest/vminit/shutdownafter"
	_ "github.com/hugelgupf/vmtest/vminit/vmmount"
	_ "github.com/u-root/u-root/cmds/core/init"
)
