// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package classifier_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upm-project/upm"
	"github.com/upm-project/upm/examples/imageclass/classifier"
)

// modelDir returns the directory of the models, $UPM_MODEL_DIR or build/model
// at the root of the repository, and skips the test when it is missing.
func modelDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("UPM_MODEL_DIR")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", "..", "build", "model")
	}
	if _, err := os.Stat(filepath.Join(dir, "tiny_face_detector_model-weights_manifest.json")); err != nil {
		t.Skipf("no models in %s: run examples/imageclass/fetch-model.sh", dir)
	}
	return dir
}

// want is what face-api 1.7.15 itself (its dist/face-api.esm.js on the
// TensorFlow.js CPU backend, in Node.js) finds in the package's sample
// photos, given the same decoded pixels:
// detectAllFaces(TinyFaceDetectorOptions()).withFaceExpressions().withAgeAndGender(),
// and the descriptor of each detected box.
type want struct {
	x, y, w, h    float64
	score         float64
	expression    string
	expressionP   float64
	gender        string
	genderP       float64
	age           float64
	descriptor012 [3]float32
}

var samples = map[string][]want{
	"sample1.jpg": {
		{776, 445, 312, 256, 0.781, "happy", 0.372, "female", 0.84, 27.6, [3]float32{-0.0186, 0.0718, 0.0828}},
		{1422, 216, 307, 283, 0.777, "happy", 0.993, "female", 0.85, 35.3, [3]float32{-0.0301, 0.1695, 0.1005}},
		{336, 396, 305, 252, 0.723, "happy", 0.515, "female", 0.75, 26.8, [3]float32{-0.0522, 0.0173, -0.0316}},
	},
	"sample2.jpg": {
		{1403, 173, 277, 264, 0.849, "sad", 0.875, "female", 0.97, 17.4, [3]float32{-0.0812, 0.0751, 0.1458}},
	},
}

func TestClassifySamples(t *testing.T) {
	dir := modelDir(t)
	m, err := classifier.Load(dir, nil)
	require.NoError(t, err)
	defer m.Close()

	st := m.Stats()
	assert.Equal(t, classifier.Models, st.Models)
	assert.EqualValues(t, 6910171, st.Params, "weights of the five models")
	assert.GreaterOrEqual(t, st.DecodedBytes, 4*st.Params)

	for name, faces := range samples {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, name))
			require.NoError(t, err)
			res, err := m.ClassifyBytes(b, classifier.ClassifyOptions{})
			require.NoError(t, err)
			require.Len(t, res.Faces, len(faces))
			for i, w := range faces {
				f := res.Faces[i]
				assert.InDelta(t, w.x, f.Box.X, 1, "face %d x", i)
				assert.InDelta(t, w.y, f.Box.Y, 1, "face %d y", i)
				assert.InDelta(t, w.w, f.Box.Width, 1, "face %d width", i)
				assert.InDelta(t, w.h, f.Box.Height, 1, "face %d height", i)
				assert.InDelta(t, w.score, f.Score, 0.001, "face %d score", i)
				assert.Equal(t, w.expression, f.Expression, "face %d expression", i)
				assert.InDelta(t, w.expressionP, f.Expressions[w.expression], 0.002, "face %d expression probability", i)
				assert.Equal(t, w.gender, f.Gender, "face %d gender", i)
				assert.InDelta(t, w.genderP, f.GenderProbability, 0.01, "face %d gender probability", i)
				assert.InDelta(t, w.age, f.Age, 0.1, "face %d age", i)
				require.Len(t, f.Descriptor, 128)
				for j, v := range w.descriptor012 {
					assert.InDelta(t, v, f.Descriptor[j], 0.0002, "face %d descriptor[%d]", i, j)
				}
				require.Len(t, f.Landmarks, 68)
				for _, p := range f.Landmarks {
					// Landmarks lie on the face, give or take its chin.
					assert.InDelta(t, f.Box.X+f.Box.Width/2, p[0], f.Box.Width)
					assert.InDelta(t, f.Box.Y+f.Box.Height/2, p[1], f.Box.Height)
				}
			}
		})
	}
}

func TestModelSubset(t *testing.T) {
	dir := modelDir(t)
	m, err := classifier.Load(dir, &classifier.Options{Models: []string{"face_recognition_model"}})
	require.NoError(t, err)
	defer m.Close()
	b, err := os.ReadFile(filepath.Join(dir, "sample1.jpg"))
	require.NoError(t, err)
	res, err := m.ClassifyBytes(b, classifier.ClassifyOptions{})
	require.NoError(t, err)
	require.Len(t, res.Faces, 3)
	for i := range res.Faces {
		assert.Empty(t, res.Faces[i].Expression, "expression model not loaded")
		assert.Empty(t, res.Faces[i].Landmarks, "landmark model not loaded")
		assert.Zero(t, classifier.Distance(res.Faces[i].Descriptor, res.Faces[i].Descriptor))
		for j := range i {
			d := classifier.Distance(res.Faces[i].Descriptor, res.Faces[j].Descriptor)
			assert.Greater(t, d, 0.3, "faces %d and %d are different people", i, j)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	_, err := classifier.Load(t.TempDir(), nil)
	assert.ErrorContains(t, err, "fetch-model.sh")

	dir := modelDir(t)
	_, err = classifier.Load(dir, &classifier.Options{Models: []string{"nope"}})
	assert.ErrorContains(t, err, `unknown model "nope"`)
}

func TestKeepRaw(t *testing.T) {
	dir := modelDir(t)
	m, err := classifier.Load(dir, &classifier.Options{Models: []string{"face_expression_model"}, KeepRaw: true})
	require.NoError(t, err)
	defer m.Close()
	st := m.Stats()
	assert.EqualValues(t, 193321+329468, st.RawBytes, "the two models' .bin files")
	if st.NotAdvised == "" {
		assert.GreaterOrEqual(t, st.AdvisedBytes, st.DecodedBytes+st.RawBytes-2*4096)
	}
}

func TestClassifyNoFace(t *testing.T) {
	dir := modelDir(t)
	m, err := classifier.Load(dir, &classifier.Options{Models: []string{}})
	require.NoError(t, err)
	defer m.Close()
	_, err = m.ClassifyBytes([]byte("not an image"), classifier.ClassifyOptions{})
	assert.ErrorContains(t, err, "decode image")
	_, err = m.ClassifyBytes(nil, classifier.ClassifyOptions{InputSize: 100})
	assert.Error(t, err)
}

func TestClassifyFace(t *testing.T) {
	dir := modelDir(t)
	m, err := classifier.Load(dir, nil)
	require.NoError(t, err)
	defer m.Close()
	sub, err := classifier.Sample2FaceImage(dir)
	require.NoError(t, err)
	face, err := m.ClassifyFace(sub, "face_expression_model", "age_gender_model")
	require.NoError(t, err)
	assert.Equal(t, "sad", face.Expression)
	assert.InDelta(t, 0.875, face.Expressions["sad"], 0.002)
	assert.Equal(t, "female", face.Gender)
	assert.InDelta(t, 17.4, face.Age, 0.1)
	assert.Empty(t, face.Descriptor)
	_, err = m.ClassifyFace(sub, "nope")
	assert.ErrorContains(t, err, "not loaded")
}

func TestParseWeights(t *testing.T) {
	for s, w := range map[string]classifier.Weights{"": classifier.WeightsArena, "arena": classifier.WeightsArena, "heap": classifier.WeightsHeap} {
		got, err := classifier.ParseWeights(s)
		require.NoError(t, err, s)
		assert.Equal(t, w, got, s)
	}
	_, err := classifier.ParseWeights("disk")
	assert.ErrorContains(t, err, `weights "disk"`)
	_, err = classifier.Load(t.TempDir(), &classifier.Options{Weights: "disk"})
	assert.ErrorContains(t, err, `weights "disk"`)
}

// classifyAll returns what m finds in the sample photos, without the times.
func classifyAll(t *testing.T, m *classifier.Model, dir string) map[string]*classifier.Result {
	t.Helper()
	out := make(map[string]*classifier.Result)
	for name := range samples {
		b, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		res, err := m.ClassifyBytes(b, classifier.ClassifyOptions{})
		require.NoError(t, err)
		res.Elapsed = 0
		out[name] = res
	}
	return out
}

func TestWeightsHeap(t *testing.T) {
	dir := modelDir(t)
	arena, err := classifier.Load(dir, nil)
	require.NoError(t, err)
	defer arena.Close()
	heap, err := classifier.Load(dir, &classifier.Options{Weights: classifier.WeightsHeap})
	require.NoError(t, err)
	defer heap.Close()

	as, hs := arena.Stats(), heap.Stats()
	assert.Equal(t, classifier.WeightsHeap, hs.Weights)
	assert.Equal(t, as.Params, hs.Params)
	assert.Equal(t, 4*hs.Params, hs.DecodedBytes, "one slab of exactly the weights")
	w := heap.WeightBytes()
	require.Len(t, w, int(hs.DecodedBytes))
	if runtime.GOOS == "linux" {
		assert.Equal(t, classifier.WeightsArena, as.Weights)
	}

	// Both placements hold the same numbers, so they find the same.
	assert.Equal(t, classifyAll(t, arena, dir), classifyAll(t, heap, dir))

	if hs.NotAdvised != "" {
		assert.Nil(t, heap.Region())
		assert.Zero(t, hs.AdvisedBytes)
		t.Skipf("not advised: %s", hs.NotAdvised)
	}
	// The region is the whole pages of the slab: its start rounded up,
	// its end down.
	r := heap.Region()
	require.NotNil(t, r)
	page := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(unsafe.SliceData(w)))
	end := start + uintptr(len(w))
	assert.Equal(t, (start+page-1)&^(page-1), r.Addr())
	assert.Equal(t, int(end&^(page-1)-r.Addr()), r.Len())
	assert.EqualValues(t, r.Len(), hs.AdvisedBytes)
	assert.Positive(t, hs.AdviseTime)
	assert.Empty(t, hs.NotAdvised)

	require.NoError(t, heap.Close())
	assert.Nil(t, heap.WeightBytes())
	assert.Nil(t, heap.Region())
	b, err := os.ReadFile(filepath.Join(dir, "sample2.jpg"))
	require.NoError(t, err)
	_, err = heap.ClassifyBytes(b, classifier.ClassifyOptions{})
	assert.ErrorContains(t, err, "closed")
}

// TestWeightsUnsupported loads both placements where the backend cannot
// merge: in a child process with UPM_BACKEND=none, as the backend is chosen
// once a process.
func TestWeightsUnsupported(t *testing.T) {
	dir := modelDir(t)
	if os.Getenv(upm.EnvBackend) != "none" && upm.CurrentBackend() != upm.BackendNone {
		cmd := exec.Command(os.Args[0], "-test.run=^TestWeightsUnsupported$", "-test.v")
		cmd.Env = append(os.Environ(), upm.EnvBackend+"=none")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Contains(t, string(out), "--- PASS: TestWeightsUnsupported")
		return
	}
	for _, w := range []classifier.Weights{classifier.WeightsArena, classifier.WeightsHeap} {
		m, err := classifier.Load(dir, &classifier.Options{Models: []string{"face_expression_model"}, Weights: w})
		require.NoError(t, err, w)
		st := m.Stats()
		assert.NotEmpty(t, st.NotAdvised, w)
		assert.Zero(t, st.AdvisedBytes, w)
		assert.Nil(t, m.Region(), w)
		b, err := os.ReadFile(filepath.Join(dir, "sample2.jpg"))
		require.NoError(t, err)
		res, err := m.ClassifyBytes(b, classifier.ClassifyOptions{})
		require.NoError(t, err, w)
		require.Len(t, res.Faces, 1, w)
		assert.Equal(t, "sad", res.Faces[0].Expression, w)
		require.NoError(t, m.Close(), w)
	}
}

func TestClassifyModels(t *testing.T) {
	dir := modelDir(t)
	m, err := classifier.Load(dir, &classifier.Options{Models: []string{"face_expression_model", "age_gender_model"}})
	require.NoError(t, err)
	defer m.Close()
	b, err := os.ReadFile(filepath.Join(dir, "sample2.jpg"))
	require.NoError(t, err)
	res, err := m.ClassifyBytes(b, classifier.ClassifyOptions{Models: []string{"face_expression_model"}})
	require.NoError(t, err)
	require.Len(t, res.Faces, 1)
	assert.Equal(t, "sad", res.Faces[0].Expression)
	assert.Empty(t, res.Faces[0].Gender, "age and gender not asked for")

	res, err = m.ClassifyBytes(b, classifier.ClassifyOptions{Models: []string{}})
	require.NoError(t, err)
	require.Len(t, res.Faces, 1, "the detector runs all the same")
	assert.Empty(t, res.Faces[0].Expression)

	_, err = m.ClassifyBytes(b, classifier.ClassifyOptions{Models: []string{"face_recognition_model"}})
	assert.ErrorContains(t, err, "not loaded")
}
