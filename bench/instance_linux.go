// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/upm-project/upm"
	"github.com/upm-project/upm/examples/imageclass/classifier"
)

// InstanceEnv, when set in its environment, makes the bench's test binary an
// instance of the function (see RunInstance); its value is the instance's
// name.
const InstanceEnv = "UPM_BENCH_INSTANCE"

// ClassifyEnv chooses what an instance classifies once loaded: "face" (the
// default: the expression network on the face in sample2.jpg, 50 ms of CPU
// on a current machine, a second or two under TCG), "full" (the whole
// pipeline on sample2.jpg: detector and all five networks, ten times that)
// or "none".
const ClassifyEnv = "UPM_BENCH_CLASSIFY"

// Ready is the line an instance prints on stdout, as JSON, when it is loaded,
// advised and has classified its image.
type Ready struct {
	Ready bool   `json:"ready"`
	Name  string `json:"name"`
	// PID is the instance's own process ID, 1 in a new PID namespace.
	PID int `json:"pid"`
	classifier.LoadStats
	// ClassifyTime is the wall time of the classification, and Result
	// its answer ("sad" for sample2.jpg's face).
	ClassifyTime time.Duration `json:"classify_ns"`
	Result       string        `json:"result"`
	// Error, if set, says why the instance failed; it then exits.
	Error string `json:"error,omitempty"`
}

// FaceEnv names a PNG of the face to classify, which the harness crops from
// sample2.jpg once for all instances.
const FaceEnv = "UPM_BENCH_FACE"

func decodeFile(path string) (image.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return classifier.Decode(f)
}

// sampleFaceImage returns the face of sample2.jpg in modelDir.
func sampleFaceImage(modelDir string) (image.Image, error) {
	img, err := decodeFile(filepath.Join(modelDir, "sample2.jpg"))
	if err != nil {
		return nil, err
	}
	return img.(interface {
		SubImage(image.Rectangle) image.Image
	}).SubImage(sampleFace), nil
}

// writeSampleFace writes the face of sample2.jpg as a PNG file in dir and
// returns its path.
func writeSampleFace(modelDir, dir string) (string, error) {
	face, err := sampleFaceImage(modelDir)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "face.png")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := png.Encode(f, face); err != nil {
		f.Close()
		return "", err
	}
	return path, f.Close()
}

// sampleFace is the face in sample2.jpg that face-api's tiny face detector
// finds (see examples/imageclass/classifier's tests).
var sampleFace = image.Rect(1402, 173, 1402+277, 173+264)

// RunInstance runs the function instance in this process and returns its exit
// code: it waits for a line on stdin (so that the harness can place it in a
// cgroup first), loads the models from modelDir, classifies, prints Ready on
// stdout, and idles until stdin closes.
func RunInstance(name, modelDir string, stdin io.Reader, stdout io.Writer) int {
	in := bufio.NewReader(stdin)
	if _, err := in.ReadString('\n'); err != nil {
		return 2
	}
	r := Ready{Name: name, PID: os.Getpid()}
	if err := runFunction(modelDir, &r); err != nil {
		r.Error = err.Error()
		_ = json.NewEncoder(stdout).Encode(r)
		return 1
	}
	r.Ready = true
	if err := json.NewEncoder(stdout).Encode(r); err != nil {
		return 1
	}
	_, _ = io.Copy(io.Discard, in) // idle until stdin closes
	return 0
}

func runFunction(modelDir string, r *Ready) error {
	m, err := classifier.Load(modelDir, nil)
	if err != nil {
		return err
	}
	r.LoadStats = m.Stats()
	if want := os.Getenv(upm.EnvBackend); want != "" && want != "none" && r.NotAdvised != "" {
		return fmt.Errorf("%s=%s, but the weights were not advised: %s", upm.EnvBackend, want, r.NotAdvised)
	}

	start := time.Now()
	switch mode := os.Getenv(ClassifyEnv); mode {
	case "full":
		img, err := decodeFile(filepath.Join(modelDir, "sample2.jpg"))
		if err != nil {
			return err
		}
		res, err := m.Classify(img, classifier.ClassifyOptions{})
		if err != nil {
			return err
		}
		if len(res.Faces) == 0 {
			return fmt.Errorf("no face found in sample2.jpg")
		}
		r.Result = res.Faces[0].Expression
	case "", "face":
		// The harness crops the face once (FaceEnv); decoding the whole
		// photo would cost each instance more than classifying it.
		var face image.Image
		if path := os.Getenv(FaceEnv); path != "" {
			if face, err = decodeFile(path); err != nil {
				return err
			}
		} else {
			if face, err = sampleFaceImage(modelDir); err != nil {
				return err
			}
		}
		f, err := m.ClassifyFace(face, "face_expression_model")
		if err != nil {
			return err
		}
		r.Result = f.Expression
	case "none":
	default:
		return fmt.Errorf("%s=%q: want face, full or none", ClassifyEnv, mode)
	}
	r.ClassifyTime = time.Since(start)

	// Give the collector's leftovers of loading and classifying back, so
	// that every configuration is measured on the memory an idle instance
	// holds, not on when the scavenger last ran.
	debug.FreeOSMemory()
	return nil
}
