// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

// Package classifier recognises faces in photos with the pretrained models
// of face-api (the npm package @vladmandic/face-api, MIT licence): it finds
// the faces (tiny face detector), and for each says its expression, age and
// gender, its 68 landmarks and a 128-number descriptor that identifies the
// person. The forward passes are plain Go.
//
// Its point in this repository is the memory the models take: Load decodes
// the TensorFlow.js weights (uint8-quantized) into float32 in a upm.Arena and
// seals it, or with Options.Weights WeightsHeap into one slab on the Go heap
// that it advises with upm.AdviseSlice, so every instance of a function that
// loads the same models holds byte-identical pages, which package upm has the
// kernel merge. Fetch the models with examples/imageclass/fetch-model.sh.
package classifier

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // decode JPEG photos
	_ "image/png"  // and PNG ones
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"
	"unsafe"

	"github.com/upm-project/upm"
)

// Sample2Face is the box face-api's tiny face detector finds around the face
// in sample2.jpg, one of the photos fetch-model.sh fetches, rounded down as
// the classifier crops it: the tests, the imageclass command's check request
// and the density benchmark all classify this crop.
var Sample2Face = image.Rect(1402, 173, 1402+277, 173+264)

// Sample2FaceImage decodes sample2.jpg in dir (the model directory) and
// returns its Sample2Face crop.
func Sample2FaceImage(dir string) (image.Image, error) {
	f, err := os.Open(filepath.Join(dir, "sample2.jpg"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := Decode(f)
	if err != nil {
		return nil, err
	}
	sub, ok := img.(interface {
		SubImage(image.Rectangle) image.Image
	})
	if !ok {
		return nil, fmt.Errorf("sample2.jpg decodes to a %T, which cannot be cropped", img)
	}
	return sub.SubImage(Sample2Face), nil
}

// Models are the models Load loads by default, all that Classify uses.
var Models = []string{detectorModel, expressionModel, ageGenderModel, landmarkModel, recognitionModel}

// names returns the weights each model must have.
var modelNames = map[string]func() []string{
	detectorModel:    detectorNames,
	expressionModel:  func() []string { return featureNames(true) },
	landmarkModel:    func() []string { return featureNames(true) },
	ageGenderModel:   xceptionNames,
	recognitionModel: recognitionNames,
}

// Weights says where Load places the decoded weights.
type Weights string

const (
	// WeightsArena decodes the weights into a upm.Arena off the Go heap
	// and seals it: advised as shareable and made read-only, so a stray
	// write faults instead of silently unsharing a page. The default.
	WeightsArena Weights = "arena"
	// WeightsHeap decodes the weights into one []float32 slab on the Go
	// heap, allocated once so that the advised range is one contiguous
	// slice, and advises it with upm.AdviseSlice: the README's lead
	// example, for programs that cannot move their data off the heap.
	WeightsHeap Weights = "heap"
)

// ParseWeights returns the placement named s: "arena" or "heap" (the empty
// string is "arena").
func ParseWeights(s string) (Weights, error) {
	switch w := Weights(s); w {
	case "", WeightsArena:
		return WeightsArena, nil
	case WeightsHeap:
		return w, nil
	}
	return "", fmt.Errorf("classifier: weights %q: want %q or %q", s, WeightsArena, WeightsHeap)
}

// Options configure Load.
type Options struct {
	// Models names the models to load, a subset of Models; the tiny face
	// detector is always loaded. Nil loads them all.
	Models []string
	// KeepRaw keeps the weight files' bytes for the life of the Model,
	// read and advised with upm.AdviseFile, besides the decoded weights.
	// By default the files are mapped in place while they are decoded and
	// unmapped after.
	KeepRaw bool
	// Weights is where the decoded weights live: WeightsArena (also the
	// empty string) or WeightsHeap.
	Weights Weights
}

// LoadStats describe what Load did with memory.
type LoadStats struct {
	// Backend is upm.CurrentBackend.
	Backend string `json:"backend"`
	// Weights is the placement of the decoded weights: "arena" or "heap".
	// It is "heap" for Options.Weights "arena" too where no arena can be
	// mapped (outside Linux).
	Weights Weights `json:"weights"`
	// Models are the models loaded, and Params their number of weights.
	Models []string `json:"models"`
	Params int64    `json:"params"`
	// DecodedBytes is the size of the arena or the heap slab that holds
	// the decoded float32 weights, and RawBytes the file bytes kept
	// (KeepRaw).
	DecodedBytes int64 `json:"decoded_bytes"`
	RawBytes     int64 `json:"raw_bytes"`
	// AdvisedBytes is what was advised to the kernel as shareable: zero
	// when the backend cannot merge, NotAdvised then says why. Of a heap
	// slab only the whole pages inside it are advised.
	AdvisedBytes int64  `json:"advised_bytes"`
	NotAdvised   string `json:"not_advised,omitempty"`
	// LoadTime is the wall time of Load. AdviseTime is the wall time of
	// its advise calls (Arena.Seal or AdviseSlice, and AdviseFile with
	// KeepRaw), and AdviseSysTime the system CPU time their thread spent
	// in them: on a UPM kernel, the merging.
	LoadTime      time.Duration `json:"load_ns"`
	AdviseTime    time.Duration `json:"advise_ns"`
	AdviseSysTime time.Duration `json:"advise_sys_ns"`
}

// Model holds loaded face models. It is safe for concurrent use: Classify
// only reads the weights.
type Model struct {
	nets   map[string]weights
	arena  *upm.Arena // the weights, WeightsArena
	slab   []float32  // the weights, WeightsHeap
	region *upm.Region
	src    *shardSource
	stats  LoadStats
}

// Load loads the models in dir (see fetch-model.sh) and decodes their
// weights into float32 where opts.Weights says: into an arena that it seals
// (advised as shareable and made read-only), or into one slab on the Go heap
// that it advises. When the backend cannot merge pages (see
// upm.BackendReason) the weights load all the same, unadvised.
func Load(dir string, opts *Options) (*Model, error) {
	start := time.Now()
	if opts == nil {
		opts = &Options{}
	}
	placement, err := ParseWeights(string(opts.Weights))
	if err != nil {
		return nil, err
	}
	models := opts.Models
	if models == nil {
		models = Models
	}
	if !slices.Contains(models, detectorModel) {
		models = append([]string{detectorModel}, models...)
	}
	m := &Model{nets: make(map[string]weights)}
	m.stats.Backend = upm.CurrentBackend().String()
	m.src = &shardSource{keepRaw: opts.KeepRaw, stats: &m.stats}

	manifests := make([]manifest, len(models))
	total := 0
	for i, name := range models {
		if modelNames[name] == nil {
			return nil, fmt.Errorf("classifier: unknown model %q (want one of %v)", name, Models)
		}
		mf, n, err := readManifest(dir, name)
		if err != nil {
			return nil, fmt.Errorf("classifier: %w (run examples/imageclass/fetch-model.sh)", err)
		}
		manifests[i] = mf
		total += n
	}
	m.stats.Models = models

	var alloc func(n int) ([]float32, error)
	if placement == WeightsArena {
		// 4 more floats a model leave room to align each model's
		// weights.
		arena, err := upm.NewArena(4 * (total + 4*len(models)))
		switch {
		case err == nil:
			m.arena = arena
			m.stats.DecodedBytes = int64(arena.Cap())
			alloc = func(n int) ([]float32, error) { return upm.ArenaSlice[float32](arena, n) }
		case errors.Is(err, upm.ErrUnsupported):
			// No arena outside Linux: the weights go to the heap,
			// and the advice would fail there too.
			m.stats.noteUnadvised(err)
			placement = WeightsHeap
		default:
			return nil, fmt.Errorf("classifier: %w", err)
		}
	}
	if placement == WeightsHeap {
		// One slab for all the weights, cut into them in order: one
		// allocation, so what is advised is one contiguous range and
		// no weight straddles the end of another allocation.
		m.slab = make([]float32, total)
		m.stats.DecodedBytes = 4 * int64(total)
		used := 0
		alloc = func(n int) ([]float32, error) {
			if n > len(m.slab)-used {
				return nil, fmt.Errorf("%d weights overflow the slab of %d", used+n, len(m.slab))
			}
			s := m.slab[used : used+n : used+n]
			used += n
			return s, nil
		}
	}
	m.stats.Weights = placement
	count := func(n int) ([]float32, error) {
		m.stats.Params += int64(n)
		return alloc(n)
	}
	for i, name := range models {
		w, err := loadWeights(dir, name, manifests[i], m.src, count)
		if err == nil {
			err = w.require(name, modelNames[name]())
		}
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("classifier: %w", err)
		}
		m.nets[name] = w
	}

	if err := m.advise(); err != nil {
		m.Close()
		return nil, fmt.Errorf("classifier: %w", err)
	}
	m.stats.LoadTime = time.Since(start)
	return m, nil
}

// advise advises the decoded weights, now written: it seals the arena, or
// advises the heap slab. A backend that cannot merge is no error.
func (m *Model) advise() error {
	var region *upm.Region
	var err error
	switch {
	case m.arena != nil:
		m.stats.timeAdvice(func() error {
			region, err = m.arena.Seal()
			return err
		})
	case m.slab != nil:
		m.stats.timeAdvice(func() error {
			region, err = upm.AdviseSlice(m.slab)
			return err
		})
	default:
		return nil
	}
	switch {
	case err == nil:
		m.region = region
		m.stats.AdvisedBytes += int64(region.Len())
	case errors.Is(err, upm.ErrUnsupported), errors.Is(err, upm.ErrTooSmall):
		m.stats.noteUnadvised(err)
	default:
		return err
	}
	return nil
}

// Stats returns what Load did.
func (m *Model) Stats() LoadStats { return m.stats }

// Region returns the advised memory of the decoded weights, the arena or the
// whole pages of the heap slab, or nil when it was not advised.
func (m *Model) Region() *upm.Region { return m.region }

// WeightBytes returns the memory that holds the decoded weights: the arena
// (read-only once sealed), or the heap slab, of which Region covers the whole
// pages. It is nil after Close.
func (m *Model) WeightBytes() []byte {
	if m.arena != nil {
		return m.arena.Bytes()
	}
	if len(m.slab) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(m.slab))), 4*len(m.slab))
}

// Close releases the model's memory. The Model must not be used afterwards.
func (m *Model) Close() error {
	var errs []error
	if m.slab != nil && m.region != nil {
		// The Region keeps the slab reachable until the advice is
		// taken off; the arena's Close takes it off its own memory.
		errs = append(errs, m.region.Unadvise())
	}
	m.region, m.slab = nil, nil
	if m.arena != nil {
		errs = append(errs, m.arena.Close())
		m.arena = nil
	}
	for _, k := range m.src.kept {
		errs = append(errs, k.Close())
	}
	m.src.kept = nil
	m.nets = nil
	return errors.Join(errs...)
}

// ClassifyOptions tune Classify. The zero value is face-api's default.
type ClassifyOptions struct {
	// InputSize is the side of the square the detector sees, a multiple
	// of 32: larger finds smaller faces, slower. 0 means 416.
	InputSize int
	// MinScore is the lowest detection score kept; 0 means 0.5.
	MinScore float64
	// MaxFaces, if positive, keeps only the best-scoring faces.
	MaxFaces int
	// Models, if not nil, names the networks run on each face, a subset
	// of the models loaded (the detector always runs): fewer is cheaper.
	// Nil runs all the models loaded.
	Models []string
}

// Result is what Classify found in an image.
type Result struct {
	Width  int    `json:"width"`
	Height int    `json:"height"`
	Faces  []Face `json:"faces"`
	// Elapsed is the time the forward passes took.
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Face is one face found in an image.
type Face struct {
	// Box is the face's bounding box in pixels of the image, and Score
	// the detector's confidence (0-1).
	Box   Rect    `json:"box"`
	Score float64 `json:"score"`
	// Expression is the most likely of Expressions, and Expressions the
	// probability of each.
	Expression  string             `json:"expression,omitempty"`
	Expressions map[string]float64 `json:"expressions,omitempty"`
	// Gender is "male" or "female", GenderProbability the confidence,
	// and Age the estimated age in years.
	Gender            string  `json:"gender,omitempty"`
	GenderProbability float64 `json:"gender_probability,omitempty"`
	Age               float64 `json:"age,omitempty"`
	// Landmarks are 68 points (x, y) of the face's outline, brows, eyes,
	// nose and mouth, in pixels of the image.
	Landmarks [][2]float64 `json:"landmarks,omitempty"`
	// Descriptor identifies the person: face-api takes two faces whose
	// descriptors lie within a Euclidean distance of 0.6 for the same
	// person. It is computed on the detector's box; face-api aligns the
	// face with its landmarks first, which separates people better.
	Descriptor []float32 `json:"descriptor,omitempty"`
}

// Rect is a rectangle in pixels.
type Rect struct {
	X      float64 `json:"x"`
	Y      float64 `json:"y"`
	Width  float64 `json:"width"`
	Height float64 `json:"height"`
}

// Distance returns the Euclidean distance between two descriptors.
func Distance(a, b []float32) float64 {
	var s float64
	for i := range min(len(a), len(b)) {
		d := float64(a[i] - b[i])
		s += d * d
	}
	return math.Sqrt(s)
}

// Decode decodes a JPEG or PNG image.
func Decode(r io.Reader) (image.Image, error) {
	img, _, err := image.Decode(r)
	if err != nil {
		return nil, fmt.Errorf("classifier: decode image: %w", err)
	}
	return img, nil
}

// ClassifyBytes decodes a JPEG or PNG image and classifies it.
func (m *Model) ClassifyBytes(b []byte, opts ClassifyOptions) (*Result, error) {
	img, err := Decode(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return m.Classify(img, opts)
}

// Classify finds the faces in img and classifies each with the models
// loaded. Each face's networks see the detector's box, cropped from the
// image, as face-api's detectAllFaces().withFaceExpressions() does.
func (m *Model) Classify(img image.Image, opts ClassifyOptions) (res *Result, err error) {
	if m.nets == nil {
		return nil, errors.New("classifier: model closed")
	}
	if opts.InputSize == 0 {
		opts.InputSize = 416
	}
	if opts.MinScore == 0 {
		opts.MinScore = 0.5
	}
	if opts.InputSize%32 != 0 || opts.InputSize < 32 || opts.InputSize > 1024 {
		return nil, fmt.Errorf("classifier: input size %d: want a multiple of 32 up to 1024", opts.InputSize)
	}
	for _, name := range opts.Models {
		if _, ok := m.nets[name]; !ok {
			return nil, fmt.Errorf("classifier: model %s not loaded", name)
		}
	}
	b := img.Bounds()
	if b.Dx() < 1 || b.Dy() < 1 {
		return nil, fmt.Errorf("classifier: empty image")
	}
	defer func() {
		// The networks panic on weights of the wrong shape.
		if r := recover(); r != nil {
			res, err = nil, fmt.Errorf("classifier: %v", r)
		}
	}()
	start := time.Now()
	t := newPicture(img)
	dets := detectFaces(m.nets[detectorModel], t, opts.InputSize, opts.MinScore)
	if opts.MaxFaces > 0 && len(dets) > opts.MaxFaces {
		dets = dets[:opts.MaxFaces]
	}
	res = &Result{Width: t.w, Height: t.h, Faces: []Face{}}
	for _, d := range dets {
		f := Face{
			Score: d.score,
			Box: Rect{
				X: d.left * float64(t.w), Y: d.top * float64(t.h),
				Width: (d.right - d.left) * float64(t.w), Height: (d.bott - d.top) * float64(t.h),
			},
		}
		// Clip the box to the image and round it down, as face-api's
		// extractFaceTensors does.
		x0, y0 := max(f.Box.X, 0), max(f.Box.Y, 0)
		cw := min(f.Box.X+f.Box.Width-x0, float64(t.w)-x0)
		ch := min(f.Box.Y+f.Box.Height-y0, float64(t.h)-y0)
		if cw < 1 || ch < 1 {
			continue
		}
		fx, fy := int(math.Floor(x0)), int(math.Floor(y0))
		m.classifyFace(&f, t.crop(fx, fy, int(math.Floor(cw)), int(math.Floor(ch))), opts.Models)
		for i := range f.Landmarks {
			f.Landmarks[i][0] += float64(fx)
			f.Landmarks[i][1] += float64(fy)
		}
		res.Faces = append(res.Faces, f)
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// ClassifyFace classifies all of img as one face, without looking for faces
// first: it runs the networks of models (all loaded ones but the detector if
// none are named) on it. Box is the whole image, Score is 1, and Landmarks
// are in pixels of img.
func (m *Model) ClassifyFace(img image.Image, models ...string) (face *Face, err error) {
	if m.nets == nil {
		return nil, errors.New("classifier: model closed")
	}
	for _, name := range models {
		if _, ok := m.nets[name]; !ok {
			return nil, fmt.Errorf("classifier: model %s not loaded", name)
		}
	}
	b := img.Bounds()
	if b.Dx() < 1 || b.Dy() < 1 {
		return nil, fmt.Errorf("classifier: empty image")
	}
	defer func() {
		if r := recover(); r != nil {
			face, err = nil, fmt.Errorf("classifier: %v", r)
		}
	}()
	face = &Face{Box: Rect{Width: float64(b.Dx()), Height: float64(b.Dy())}, Score: 1}
	m.classifyFace(face, newPicture(img), models)
	return face, nil
}

// classifyFace runs the networks of models, or all loaded ones if nil, on
// the face p and fills in f.
func (m *Model) classifyFace(f *Face, p picture, models []string) {
	run := func(name string) (weights, bool) {
		w, ok := m.nets[name]
		if ok && models != nil {
			ok = slices.Contains(models, name)
		}
		return w, ok
	}
	if w, ok := run(expressionModel); ok {
		probs := expressions(w, p)
		f.Expressions = make(map[string]float64, len(probs))
		best := 0
		for i, v := range probs {
			f.Expressions[Expressions[i]] = float64(v)
			if v > probs[best] {
				best = i
			}
		}
		f.Expression = Expressions[best]
	}
	if w, ok := run(ageGenderModel); ok {
		age, male := ageGender(w, p)
		f.Age = age
		if male > 0.5 {
			f.Gender, f.GenderProbability = "male", male
		} else {
			f.Gender, f.GenderProbability = "female", 1-male
		}
	}
	if w, ok := run(landmarkModel); ok {
		f.Landmarks = landmarks(w, p)
	}
	if w, ok := run(recognitionModel); ok {
		f.Descriptor = descriptor(w, p)
	}
}
