// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package classifier

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/upm-project/upm"
)

// manifest is a TensorFlow.js weights manifest (name-weights_manifest.json,
// or the weightsManifest of a model.json): groups of weights, each stored in
// one or more binary shards, one after the other.
type manifest []struct {
	Paths   []string         `json:"paths"`
	Weights []manifestWeight `json:"weights"`
}

type manifestWeight struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
	// Dtype is the weight's type once decoded: float32 or int32.
	Dtype string `json:"dtype"`
	// Quantization, when present, says how the weight is stored: as uint8
	// or uint16 codes q standing for q*Scale+Min, or as float16.
	Quantization *struct {
		Dtype string  `json:"dtype"`
		Scale float64 `json:"scale"`
		Min   float64 `json:"min"`
	} `json:"quantization"`
}

// elems returns the number of elements of the weight.
func (w manifestWeight) elems() int {
	n := 1
	for _, d := range w.Shape {
		n *= d
	}
	return n
}

// storedBytes returns the size of the weight in its shard.
func (w manifestWeight) storedBytes() (int, error) {
	size := 0
	switch {
	case w.Quantization != nil:
		switch w.Quantization.Dtype {
		case "uint8":
			size = 1
		case "uint16", "float16":
			size = 2
		default:
			return 0, fmt.Errorf("weight %s: quantization %q not supported", w.Name, w.Quantization.Dtype)
		}
	case w.Dtype == "float32" || w.Dtype == "int32":
		size = 4
	default:
		return 0, fmt.Errorf("weight %s: dtype %q not supported", w.Name, w.Dtype)
	}
	return size * w.elems(), nil
}

// decode writes the weight stored in b into out, as float32.
func (w manifestWeight) decode(b []byte, out []float32) {
	le := binary.LittleEndian
	q := w.Quantization
	switch {
	case q != nil && q.Dtype == "uint8":
		for i := range out {
			out[i] = float32(float64(b[i])*q.Scale + q.Min)
		}
	case q != nil && q.Dtype == "uint16":
		for i := range out {
			out[i] = float32(float64(le.Uint16(b[2*i:]))*q.Scale + q.Min)
		}
	case q != nil && q.Dtype == "float16":
		for i := range out {
			out[i] = half(le.Uint16(b[2*i:]))
		}
	case w.Dtype == "int32":
		for i := range out {
			out[i] = float32(int32(le.Uint32(b[4*i:])))
		}
	default:
		for i := range out {
			out[i] = math.Float32frombits(le.Uint32(b[4*i:]))
		}
	}
}

// half converts an IEEE 754 half-precision number to float32.
func half(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0 && frac == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal
		f := float32(frac) / 1024 / 16384
		if sign != 0 {
			f = -f
		}
		return f
	case exp == 0x1f:
		return math.Float32frombits(sign | 0xff<<23 | frac<<13)
	default:
		return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
	}
}

// weights are the decoded parameters of one network, by name.
type weights map[string]param

// get returns the parameter name; the networks check their names when the
// model loads (see require), so a missing one is a bug.
func (w weights) get(name string) param {
	p, ok := w[name]
	if !ok {
		panic(fmt.Sprintf("classifier: no weight %q", name))
	}
	return p
}

// require returns an error naming the first of names that w lacks.
func (w weights) require(model string, names []string) error {
	for _, n := range names {
		if _, ok := w[n]; !ok {
			return fmt.Errorf("model %s has no weight %q", model, n)
		}
	}
	return nil
}

// readManifest reads dir/name-weights_manifest.json and returns it with the
// number of float32 values its weights decode to.
func readManifest(dir, name string) (manifest, int, error) {
	path := filepath.Join(dir, name+"-weights_manifest.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	n := 0
	for _, g := range m {
		for _, w := range g.Weights {
			n += w.elems()
		}
	}
	return m, n, nil
}

// shardSource reads shards for loadWeights and accounts for the advice.
type shardSource struct {
	keepRaw bool
	stats   *LoadStats
	kept    []*upm.Mapping
}

// read returns the bytes of the shard at path and a function to call once
// they are decoded. Shards are mapped in place (upm.MapFile: the page cache,
// no copy) and unmapped after decoding, unless keepRaw asks to keep the file
// bytes for the life of the model: then they are read with upm.AdviseFile,
// advised, and kept.
func (s *shardSource) read(path string) ([]byte, func(), error) {
	if s.keepRaw {
		var m *upm.Mapping
		var err error
		s.stats.timeAdvice(func() error {
			m, err = upm.AdviseFile(path)
			return err
		})
		switch {
		case err == nil:
			s.kept = append(s.kept, m)
			s.stats.RawBytes += int64(m.Len())
			s.stats.AdvisedBytes += int64(m.Region().Len())
			return m.Bytes(), func() {}, nil
		case errors.Is(err, upm.ErrUnsupported):
			s.stats.noteUnadvised(err)
			b, err := os.ReadFile(path)
			s.stats.RawBytes += int64(len(b))
			return b, func() {}, err
		default:
			return nil, nil, err
		}
	}
	m, err := upm.MapFile(path)
	if errors.Is(err, upm.ErrUnsupported) {
		b, err := os.ReadFile(path)
		return b, func() {}, err
	}
	if err != nil {
		return nil, nil, err
	}
	return m.Bytes(), func() { _ = m.Close() }, nil
}

// loadWeights decodes the weights of dir/name into float32 slices from
// alloc.
func loadWeights(dir, name string, m manifest, src *shardSource, alloc func(n int) ([]float32, error)) (weights, error) {
	w := make(weights)
	for _, g := range m {
		var data []byte
		var done []func()
		for _, p := range g.Paths {
			b, release, err := src.read(filepath.Join(dir, p))
			if err != nil {
				for _, f := range done {
					f()
				}
				return nil, fmt.Errorf("model %s: %w", name, err)
			}
			done = append(done, release)
			if len(g.Paths) == 1 {
				data = b
			} else {
				data = append(data, b...)
			}
		}
		off := 0
		var err error
		for _, mw := range g.Weights {
			var size int
			size, err = mw.storedBytes()
			if err != nil {
				break
			}
			if off+size > len(data) {
				err = fmt.Errorf("weight %s: shards end at byte %d, the weight at %d", mw.Name, len(data), off+size)
				break
			}
			var out []float32
			out, err = alloc(mw.elems())
			if err != nil {
				break
			}
			mw.decode(data[off:off+size], out)
			w[mw.Name] = param{shape: mw.Shape, d: out}
			off += size
		}
		for _, f := range done {
			f()
		}
		if err != nil {
			return nil, fmt.Errorf("model %s: %w", name, err)
		}
	}
	return w, nil
}

// timeAdvice runs an advise call f and adds its wall time and its thread's
// system CPU time to s.
func (s *LoadStats) timeAdvice(f func() error) time.Duration {
	wall, sys := measure(f)
	s.AdviseTime += wall
	s.AdviseSysTime += sys
	return wall
}

func (s *LoadStats) noteUnadvised(err error) {
	if s.NotAdvised == "" {
		s.NotAdvised = err.Error()
	}
}
