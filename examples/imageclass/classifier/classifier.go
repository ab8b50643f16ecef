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
// seals it, so every instance of a function that loads the same models holds
// byte-identical pages, which package upm has the kernel merge. Fetch the
// models with examples/imageclass/fetch-model.sh.
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
	"slices"
	"time"

	"github.com/upm-project/upm"
)

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
}

// LoadStats describe what Load did with memory.
type LoadStats struct {
	// Backend is upm.CurrentBackend.
	Backend string `json:"backend"`
	// Models are the models loaded, and Params their number of weights.
	Models []string `json:"models"`
	Params int64    `json:"params"`
	// DecodedBytes is the size of the arena that holds the decoded
	// float32 weights, and RawBytes the file bytes kept (KeepRaw).
	DecodedBytes int64 `json:"decoded_bytes"`
	RawBytes     int64 `json:"raw_bytes"`
	// AdvisedBytes is what was advised to the kernel as shareable: zero
	// when the backend cannot merge, NotAdvised then says why.
	AdvisedBytes int64  `json:"advised_bytes"`
	NotAdvised   string `json:"not_advised,omitempty"`
	// LoadTime is the wall time of Load. AdviseTime is the wall time of
	// its advise calls (Arena.Seal, and AdviseFile with KeepRaw), and
	// AdviseSysTime the system CPU time their thread spent in them: on a
	// UPM kernel, the merging.
	LoadTime      time.Duration `json:"load_ns"`
	AdviseTime    time.Duration `json:"advise_ns"`
	AdviseSysTime time.Duration `json:"advise_sys_ns"`
}

// Model holds loaded face models. It is safe for concurrent use: Classify
// only reads the weights.
type Model struct {
	nets   map[string]weights
	arena  *upm.Arena
	region *upm.Region
	src    *shardSource
	stats  LoadStats
}

// Load loads the models in dir (see fetch-model.sh), decodes their weights
// into float32 in an arena and seals it: the arena is advised as shareable
// and made read-only. When the backend cannot merge pages (see
// upm.BackendReason) the weights load all the same, unadvised.
func Load(dir string, opts *Options) (*Model, error) {
	start := time.Now()
	if opts == nil {
		opts = &Options{}
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
		total += n + 4 // room to align each model's weights
	}
	m.stats.Models = models
	m.stats.Params = 0

	arena, err := upm.NewArena(4 * total)
	if err != nil && !errors.Is(err, upm.ErrUnsupported) {
		return nil, fmt.Errorf("classifier: %w", err)
	}
	m.arena = arena
	alloc := func(n int) ([]float32, error) {
		m.stats.Params += int64(n)
		if arena == nil {
			return make([]float32, n), nil
		}
		return upm.ArenaSlice[float32](arena, n)
	}
	for i, name := range models {
		w, err := loadWeights(dir, name, manifests[i], m.src, alloc)
		if err == nil {
			err = w.require(name, modelNames[name]())
		}
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("classifier: %w", err)
		}
		m.nets[name] = w
	}

	if arena != nil {
		m.stats.DecodedBytes = int64(arena.Cap())
		var region *upm.Region
		var serr error
		m.stats.timeAdvice(func() error {
			region, serr = arena.Seal()
			return serr
		})
		switch {
		case serr == nil:
			m.region = region
			m.stats.AdvisedBytes += int64(region.Len())
		case errors.Is(serr, upm.ErrUnsupported):
			m.stats.noteUnadvised(serr)
		default:
			m.Close()
			return nil, fmt.Errorf("classifier: %w", serr)
		}
	} else {
		m.stats.DecodedBytes = 4 * m.stats.Params
		m.stats.noteUnadvised(err)
	}
	m.stats.LoadTime = time.Since(start)
	return m, nil
}

// Stats returns what Load did.
func (m *Model) Stats() LoadStats { return m.stats }

// Region returns the advised arena of decoded weights, or nil when it was not
// advised.
func (m *Model) Region() *upm.Region { return m.region }

// WeightBytes returns the memory that holds the decoded weights, the bytes
// that Load advises (read-only once sealed), or nil where they live on the Go
// heap (outside Linux).
func (m *Model) WeightBytes() []byte {
	if m.arena == nil {
		return nil
	}
	return m.arena.Bytes()
}

// Close releases the model's memory. The Model must not be used afterwards.
func (m *Model) Close() error {
	var errs []error
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
		m.classifyFace(&f, t.crop(fx, fy, int(math.Floor(cw)), int(math.Floor(ch))), nil)
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
