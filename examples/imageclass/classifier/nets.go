// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package classifier

import (
	"fmt"
	"image"
	"image/color"
	"math"
	"sort"
)

// The networks below are those of face-api (github.com/vladmandic/face-api,
// MIT), written again over the tensor type: the same layers, paddings and
// pre- and post-processing, so the package's weights give the same results.

// --- input -----------------------------------------------------------------

// picture is a rectangle of an image, read pixel by pixel: the networks
// sample a few hundred thousand pixels of a photo of millions, so it is never
// converted whole.
type picture struct {
	img    image.Image
	ycc    *image.YCbCr // img, when a JPEG decoded it
	rgba   *image.RGBA  // img, when it is RGBA
	x0, y0 int          // the rectangle's top left corner in img
	w, h   int
}

func newPicture(img image.Image) picture {
	b := img.Bounds()
	p := picture{img: img, x0: b.Min.X, y0: b.Min.Y, w: b.Dx(), h: b.Dy()}
	switch m := img.(type) {
	case *image.YCbCr:
		p.ycc = m
	case *image.RGBA:
		p.rgba = m
	}
	return p
}

// crop returns the rectangle [x, x+w) x [y, y+h) of p.
func (p picture) crop(x, y, w, h int) picture {
	p.x0 += x
	p.y0 += y
	p.w, p.h = w, h
	return p
}

// rgb returns the colour of the pixel (x, y) of p, 0-255 a channel, as
// image/draw converts it to RGBA.
func (p picture) rgb(x, y int) (r, g, b float32) {
	x += p.x0
	y += p.y0
	switch {
	case p.ycc != nil:
		yi, ci := p.ycc.YOffset(x, y), p.ycc.COffset(x, y)
		r8, g8, b8 := color.YCbCrToRGB(p.ycc.Y[yi], p.ycc.Cb[ci], p.ycc.Cr[ci])
		return float32(r8), float32(g8), float32(b8)
	case p.rgba != nil:
		i := p.rgba.PixOffset(x, y)
		return float32(p.rgba.Pix[i]), float32(p.rgba.Pix[i+1]), float32(p.rgba.Pix[i+2])
	default:
		r16, g16, b16, _ := p.img.At(x, y).RGBA()
		return float32(r16 >> 8), float32(g16 >> 8), float32(b16 >> 8)
	}
}

// netInput is face-api's NetInput.toBatchTensor followed by the networks'
// normalisation: pad p with black to a square, after the picture or around it
// when center is set (the larger half after, as face-api's padToSquare),
// resize the square to size x size (tf.image.resizeBilinear without aligned
// corners or half-pixel centres), subtract the mean colour and divide by 255.
func netInput(p picture, size int, center bool, mean [3]float32) *tensor {
	side := max(p.w, p.h)
	before := 0
	if center {
		diff := side - min(p.w, p.h)
		before = diff - int(math.Floor(float64(diff)*0.5+0.5))
	}
	bx, by := 0, 0
	if p.w < p.h {
		bx = before
	} else {
		by = before
	}
	// px returns the pixel (x, y) of the padded square.
	px := func(x, y int) (r, g, b float32) {
		x, y = x-bx, y-by
		if x < 0 || y < 0 || x >= p.w || y >= p.h {
			return 0, 0, 0
		}
		return p.rgb(x, y)
	}
	out := newTensor(size, size, 3)
	scale := float64(side) / float64(size)
	for oy := range size {
		fy := float64(oy) * scale
		y0 := int(fy)
		y1 := min(y0+1, side-1)
		dy := float32(fy - float64(y0))
		for ox := range size {
			fx := float64(ox) * scale
			x0 := int(fx)
			x1 := min(x0+1, side-1)
			dx := float32(fx - float64(x0))
			ar, ag, ab := px(x0, y0)
			br, bg, bb := px(x1, y0)
			cr, cg, cb := px(x0, y1)
			dr, dg, db := px(x1, y1)
			lerp := func(a, b, c, d float32) float32 {
				top := a + (b-a)*dx
				bot := c + (d-c)*dx
				return top + (bot-top)*dy
			}
			o := out.at(oy, ox)
			o[0] = (lerp(ar, br, cr, dr) - mean[0]) / 255
			o[1] = (lerp(ag, bg, cg, dg) - mean[1]) / 255
			o[2] = (lerp(ab, bb, cb, db) - mean[2]) / 255
		}
	}
	return out
}

// faceMean is the mean colour of the face networks' training images.
var faceMean = [3]float32{122.782, 117.001, 104.298}

// --- tiny face detector ------------------------------------------------------

// detectorModel is face-api's TinyFaceDetector: a tiny YOLOv2 whose layers
// are depthwise-separable convolutions, finding faces as boxes relative to
// 5 anchors in a 13x13 grid (for a 416-pixel input).
const detectorModel = "tiny_face_detector_model"

var (
	detectorMean    = [3]float32{117.001, 114.697, 97.404}
	detectorAnchors = [5][2]float64{
		{1.603231, 2.094468}, {6.041143, 7.080126}, {2.882459, 3.518061},
		{4.266906, 5.178857}, {9.041765, 10.66308},
	}
)

const detectorIOU = 0.4

func detectorNames() []string {
	names := []string{"conv0/filters", "conv0/bias", "conv8/filters", "conv8/bias"}
	for i := 1; i <= 5; i++ {
		names = append(names, sepNames(fmt.Sprintf("conv%d", i))...)
	}
	return names
}

func sepNames(prefix string) []string {
	return []string{prefix + "/depthwise_filter", prefix + "/pointwise_filter", prefix + "/bias"}
}

// detection is a face found by the detector, relative to the image size.
type detection struct {
	score                  float64
	left, top, right, bott float64
}

// detectFaces runs the tiny face detector on img at inputSize (a multiple of
// 32) and returns the faces scoring above minScore, best first.
func detectFaces(w weights, img picture, inputSize int, minScore float64) []detection {
	x := netInput(img, inputSize, false, detectorMean)
	out := leaky(conv2d(x, w.get("conv0/filters"), w.get("conv0/bias"), 1, valid))
	out = maxPool(out, 2, 2, same)
	for i := 1; i <= 5; i++ {
		out = leaky(sepConv(out, w, fmt.Sprintf("conv%d", i), 1, same))
		stride := 2
		if i == 5 {
			stride = 1
		}
		out = maxPool(out, 2, stride, same)
	}
	out = pointwise(out, w.get("conv8/filters"), w.get("conv8/bias"))

	// The input was padded to a square after the image: correct the boxes
	// back to the image's own width and height.
	scale := float64(inputSize) / float64(max(img.w, img.h))
	corrX := float64(inputSize) / math.Round(float64(img.w)*scale)
	corrY := float64(inputSize) / math.Round(float64(img.h)*scale)
	cells := float64(out.h)
	var found []detection
	for row := range out.h {
		for col := range out.w {
			v := out.at(row, col)
			for a, anchor := range detectorAnchors {
				b := v[a*5 : a*5+5]
				score := sigmoid(b[4])
				if score <= minScore {
					continue
				}
				cx := (float64(col) + sigmoid(b[0])) / cells * corrX
				cy := (float64(row) + sigmoid(b[1])) / cells * corrY
				bw := math.Exp(float64(b[2])) * anchor[0] / cells * corrX
				bh := math.Exp(float64(b[3])) * anchor[1] / cells * corrY
				found = append(found, detection{
					score: score,
					left:  cx - bw/2, top: cy - bh/2,
					right: cx + bw/2, bott: cy + bh/2,
				})
			}
		}
	}
	return nonMaxSuppression(found, detectorIOU)
}

// nonMaxSuppression keeps the best-scoring boxes that overlap no better box
// by more than iou.
func nonMaxSuppression(ds []detection, threshold float64) []detection {
	sort.SliceStable(ds, func(i, j int) bool { return ds[i].score > ds[j].score })
	var keep []detection
	for _, d := range ds {
		ok := true
		for _, k := range keep {
			if iou(d, k) > threshold {
				ok = false
				break
			}
		}
		if ok {
			keep = append(keep, d)
		}
	}
	return keep
}

func iou(a, b detection) float64 {
	w := min(a.right, b.right) - max(a.left, b.left)
	h := min(a.bott, b.bott) - max(a.top, b.top)
	if w <= 0 || h <= 0 {
		return 0
	}
	inter := w * h
	area := func(d detection) float64 { return (d.right - d.left) * (d.bott - d.top) }
	return inter / (area(a) + area(b) - inter)
}

// --- face feature extractor: expressions and landmarks ------------------------

const (
	expressionModel = "face_expression_model"
	landmarkModel   = "face_landmark_68_model"
)

// Expressions are the labels of the expression network's outputs.
var Expressions = []string{"neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised"}

func featureNames(fcOut bool) []string {
	var names []string
	for b := range 4 {
		for c := range 4 {
			p := fmt.Sprintf("dense%d/conv%d", b, c)
			if b == 0 && c == 0 {
				names = append(names, p+"/filters", p+"/bias")
			} else {
				names = append(names, sepNames(p)...)
			}
		}
	}
	if fcOut {
		names = append(names, "fc/weights", "fc/bias")
	}
	return names
}

// faceFeatures is face-api's FaceFeatureExtractor: four dense blocks of
// separable convolutions over a 112-pixel face, average-pooled to 256
// features.
func faceFeatures(w weights, face picture) []float32 {
	out := netInput(face, 112, true, faceMean)
	for b := range 4 {
		out = denseBlock4(w, fmt.Sprintf("dense%d", b), out, b == 0)
	}
	return avgPool(out, 7, 2).d
}

func denseBlock4(w weights, prefix string, x *tensor, first bool) *tensor {
	var out1 *tensor
	if first {
		out1 = relu(conv2d(x, w.get(prefix+"/conv0/filters"), w.get(prefix+"/conv0/bias"), 2, same))
	} else {
		out1 = relu(sepConv(x, w, prefix+"/conv0", 2, same))
	}
	out2 := sepConv(out1, w, prefix+"/conv1", 1, same)
	in3 := relu(add(out1, out2))
	out3 := sepConv(in3, w, prefix+"/conv2", 1, same)
	in4 := relu(add(out1, out2, out3))
	out4 := sepConv(in4, w, prefix+"/conv3", 1, same)
	return relu(add(out1, out2, out3, out4))
}

// expressions returns the probabilities of Expressions for a face.
func expressions(w weights, face picture) []float32 {
	return softmax(dense(faceFeatures(w, face), w.get("fc/weights"), w.get("fc/bias")))
}

// landmarks returns the 68 facial landmarks of a face, in pixels of face.
func landmarks(w weights, face picture) [][2]float64 {
	out := dense(faceFeatures(w, face), w.get("fc/weights"), w.get("fc/bias"))
	// The network sees the face padded to a square around its centre.
	scale := 112 / float64(max(face.w, face.h))
	fw, fh := float64(face.w)*scale, float64(face.h)*scale
	var padX, padY float64
	if fw < fh {
		padX = (fh - fw) / 2
	} else {
		padY = (fw - fh) / 2
	}
	pts := make([][2]float64, len(out)/2)
	for i := range pts {
		rx := (float64(out[2*i])*112 - padX) / fw
		ry := (float64(out[2*i+1])*112 - padY) / fh
		pts[i] = [2]float64{rx * float64(face.w), ry * float64(face.h)}
	}
	return pts
}

// --- tiny xception: age and gender --------------------------------------------

const ageGenderModel = "age_gender_model"

func xceptionNames() []string {
	names := []string{"entry_flow/conv_in/filters", "entry_flow/conv_in/bias",
		"fc/age/weights", "fc/age/bias", "fc/gender/weights", "fc/gender/bias"}
	for _, rb := range []string{"entry_flow/reduction_block_0", "entry_flow/reduction_block_1", "exit_flow/reduction_block"} {
		names = append(names, sepNames(rb+"/separable_conv0")...)
		names = append(names, sepNames(rb+"/separable_conv1")...)
		names = append(names, rb+"/expansion_conv/filters", rb+"/expansion_conv/bias")
	}
	for i := range 2 {
		for c := range 3 {
			names = append(names, sepNames(fmt.Sprintf("middle_flow/main_block_%d/separable_conv%d", i, c))...)
		}
	}
	return append(names, sepNames("exit_flow/separable_conv")...)
}

// ageGender is face-api's AgeGenderNet, a TinyXception with two main blocks:
// it returns the estimated age in years and the probability that the face
// is male.
func ageGender(w weights, face picture) (age, male float64) {
	x := netInput(face, 112, true, faceMean)
	out := relu(conv2d(x, w.get("entry_flow/conv_in/filters"), w.get("entry_flow/conv_in/bias"), 2, same))
	out = reductionBlock(w, "entry_flow/reduction_block_0", out, false)
	out = reductionBlock(w, "entry_flow/reduction_block_1", out, true)
	for i := range 2 {
		p := fmt.Sprintf("middle_flow/main_block_%d", i)
		m := sepConv(relu(copyTensor(out)), w, p+"/separable_conv0", 1, same)
		m = sepConv(relu(m), w, p+"/separable_conv1", 1, same)
		m = sepConv(relu(m), w, p+"/separable_conv2", 1, same)
		out = add(m, out)
	}
	out = reductionBlock(w, "exit_flow/reduction_block", out, true)
	out = relu(sepConv(out, w, "exit_flow/separable_conv", 1, same))
	pooled := avgPool(out, 7, 2).d
	age = float64(dense(pooled, w.get("fc/age/weights"), w.get("fc/age/bias"))[0])
	gender := softmax(dense(pooled, w.get("fc/gender/weights"), w.get("fc/gender/bias")))
	return age, float64(gender[0])
}

func reductionBlock(w weights, prefix string, x *tensor, activate bool) *tensor {
	out := x
	if activate {
		out = relu(copyTensor(x))
	}
	out = sepConv(out, w, prefix+"/separable_conv0", 1, same)
	out = sepConv(relu(out), w, prefix+"/separable_conv1", 1, same)
	out = maxPool(out, 3, 2, same)
	exp := conv2d(x, w.get(prefix+"/expansion_conv/filters"), w.get(prefix+"/expansion_conv/bias"), 2, same)
	return add(out, exp)
}

func copyTensor(t *tensor) *tensor {
	return &tensor{h: t.h, w: t.w, c: t.c, d: append([]float32(nil), t.d...)}
}

// --- face recognition: descriptors --------------------------------------------

const recognitionModel = "face_recognition_model"

var recognitionLayers = []string{
	"conv32_1", "conv32_2", "conv32_3",
	"conv64_down", "conv64_1", "conv64_2", "conv64_3",
	"conv128_down", "conv128_1", "conv128_2",
	"conv256_down", "conv256_1", "conv256_2", "conv256_down_out",
}

func recognitionNames() []string {
	convNames := func(p string) []string {
		return []string{p + "/conv/filters", p + "/conv/bias", p + "/scale/weights", p + "/scale/biases"}
	}
	names := append(convNames("conv32_down"), "fc")
	for _, l := range recognitionLayers {
		names = append(names, convNames(l+"/conv1")...)
		names = append(names, convNames(l+"/conv2")...)
	}
	return names
}

// descriptor is face-api's FaceRecognitionNet, a ResNet-34-like network
// (dlib's face recognition model): it maps a face to 128 numbers such that
// faces of one person lie within a Euclidean distance of about 0.6.
func descriptor(w weights, face picture) []float32 {
	x := netInput(face, 150, true, faceMean)
	out := resConv(w, "conv32_down", x, 2, valid, true)
	out = maxPool(out, 3, 2, valid)
	for _, l := range recognitionLayers {
		if len(l) > 5 && l[len(l)-5:] == "_down" || l == "conv256_down_out" {
			out = residualDown(w, l, out)
		} else {
			out = residual(w, l, out)
		}
	}
	mean := make([]float32, out.c)
	for i := 0; i < len(out.d); i += out.c {
		for c := range mean {
			mean[c] += out.d[i+c]
		}
	}
	for c := range mean {
		mean[c] /= float32(out.h * out.w)
	}
	return dense(mean, w.get("fc"), param{})
}

func resConv(w weights, prefix string, x *tensor, stride int, p padding, withRelu bool) *tensor {
	out := conv2d(x, w.get(prefix+"/conv/filters"), w.get(prefix+"/conv/bias"), stride, p)
	out = scaleShift(out, w.get(prefix+"/scale/weights"), w.get(prefix+"/scale/biases"))
	if withRelu {
		relu(out)
	}
	return out
}

func residual(w weights, prefix string, x *tensor) *tensor {
	out := resConv(w, prefix+"/conv1", x, 1, same, true)
	out = resConv(w, prefix+"/conv2", out, 1, same, false)
	return relu(add(out, x))
}

func residualDown(w weights, prefix string, x *tensor) *tensor {
	out := resConv(w, prefix+"/conv1", x, 2, valid, true)
	out = resConv(w, prefix+"/conv2", out, 1, same, false)
	pooled := avgPool(x, 2, 2)
	// face-api pads the convolution's output with a row and a column of
	// zeros after it when the pooled input is larger, and the pooled input
	// with zero channels when the output has more.
	sum := newTensor(pooled.h, pooled.w, out.c)
	for y := range sum.h {
		for xx := range sum.w {
			s := sum.at(y, xx)
			if y < out.h && xx < out.w {
				copy(s, out.at(y, xx))
			}
			for c, v := range pooled.at(y, xx) {
				s[c] += v
			}
		}
	}
	return relu(sum)
}
