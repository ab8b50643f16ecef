// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package upm

import "fmt"

type sysFiles struct{}

func systemFiles() sysFiles { return sysFiles{} }

func diagnose(det detection, _ sysFiles, _ []*Region) Diagnosis {
	return Diagnosis{
		Backend: det.backend,
		Forced:  det.forced,
		KSMRun:  -1,
		Domain:  MergeDomain{Processes: -1},
		Findings: []Finding{{
			Code:   CodeUnsupported,
			Fact:   fmt.Sprintf("Nothing is merged: %v.", det.err),
			Remedy: "Advise, AdviseFile and Arena.Seal return errors wrapping ErrUnsupported; the data works as usual, unshared.",
		}},
	}
}

func diagnoseRegion(mem []byte, det detection) RegionDiagnosis {
	return RegionDiagnosis{
		Addr:     addrOf(mem),
		Len:      len(mem),
		Findings: []Finding{{Code: CodeUnsupported, Fact: fmt.Sprintf("Nothing is merged: %v.", det.err)}},
	}
}

func regionStatus(_ []byte, _ Backend, det detection) Status {
	return Status{State: StateNotMerging, Code: CodeUnsupported, Reason: fmt.Sprint(det.err)}
}
