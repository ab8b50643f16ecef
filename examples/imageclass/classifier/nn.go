// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package classifier

import (
	"fmt"
	"math"
)

// tensor is a feature map of one image in NHWC order without the N: h rows
// of w pixels of c channels.
type tensor struct {
	h, w, c int
	d       []float32
}

func newTensor(h, w, c int) *tensor {
	return &tensor{h: h, w: w, c: c, d: make([]float32, h*w*c)}
}

func (t *tensor) at(y, x int) []float32 {
	i := (y*t.w + x) * t.c
	return t.d[i : i+t.c : i+t.c]
}

// padding is TensorFlow's padding mode of a convolution or a pool.
type padding int

const (
	valid padding = iota
	same
)

// outSize returns the output size and the padding before the input along one
// axis, as TensorFlow computes them: "same" pads to ceil(in/stride) outputs,
// with the odd padding pixel after the input.
func outSize(in, k, stride int, p padding) (out, before int) {
	if p == valid {
		return (in-k)/stride + 1, 0
	}
	out = (in + stride - 1) / stride
	total := max((out-1)*stride+k-in, 0)
	return out, total / 2
}

// param is one weight of a model, decoded to float32.
type param struct {
	shape []int
	d     []float32
}

// conv2d is tf.conv2d with filters of shape [k, k, in, out], plus bias.
func conv2d(x *tensor, filters, bias param, stride int, p padding) *tensor {
	k, cin, cout := filters.shape[0], filters.shape[2], filters.shape[3]
	if filters.shape[1] != k || cin != x.c {
		panic(fmt.Sprintf("conv2d: filters %v on %d channels", filters.shape, x.c))
	}
	oh, pt := outSize(x.h, k, stride, p)
	ow, pl := outSize(x.w, k, stride, p)
	out := newTensor(oh, ow, cout)
	for oy := range oh {
		for ox := range ow {
			o := out.at(oy, ox)
			copy(o, bias.d)
			for ky := range k {
				iy := oy*stride + ky - pt
				if iy < 0 || iy >= x.h {
					continue
				}
				for kx := range k {
					ix := ox*stride + kx - pl
					if ix < 0 || ix >= x.w {
						continue
					}
					in := x.at(iy, ix)
					wk := filters.d[(ky*k+kx)*cin*cout:]
					for ci, v := range in {
						axpy(o, wk[ci*cout:ci*cout+cout], v)
					}
				}
			}
		}
	}
	return out
}

// axpy adds v*w to o.
func axpy(o, w []float32, v float32) {
	w = w[:len(o)]
	for i := range o {
		o[i] += v * w[i]
	}
}

// depthwise3 is the depthwise half of tf.separableConv2d: a 3x3 filter of
// shape [3, 3, c, 1] per channel, no bias.
func depthwise3(x *tensor, filter param, stride int, p padding) *tensor {
	c := x.c
	if filter.shape[0] != 3 || filter.shape[2] != c {
		panic(fmt.Sprintf("depthwise: filter %v on %d channels", filter.shape, c))
	}
	oh, pt := outSize(x.h, 3, stride, p)
	ow, pl := outSize(x.w, 3, stride, p)
	out := newTensor(oh, ow, c)
	for oy := range oh {
		for ox := range ow {
			o := out.at(oy, ox)
			for ky := range 3 {
				iy := oy*stride + ky - pt
				if iy < 0 || iy >= x.h {
					continue
				}
				for kx := range 3 {
					ix := ox*stride + kx - pl
					if ix < 0 || ix >= x.w {
						continue
					}
					in := x.at(iy, ix)
					wk := filter.d[(ky*3+kx)*c : (ky*3+kx)*c+c]
					for i := range o {
						o[i] += in[i] * wk[i]
					}
				}
			}
		}
	}
	return out
}

// pointwise is a 1x1 convolution with filters [1, 1, in, out] (or a matrix
// [in, out]) plus bias, over every pixel.
func pointwise(x *tensor, filters, bias param) *tensor {
	cin := x.c
	cout := len(filters.d) / cin
	if cin*cout != len(filters.d) {
		panic(fmt.Sprintf("pointwise: filters %v on %d channels", filters.shape, cin))
	}
	out := newTensor(x.h, x.w, cout)
	for y := range x.h {
		for xx := range x.w {
			o := out.at(y, xx)
			if bias.d != nil {
				copy(o, bias.d)
			}
			for ci, v := range x.at(y, xx) {
				if v != 0 {
					axpy(o, filters.d[ci*cout:ci*cout+cout], v)
				}
			}
		}
	}
	return out
}

// sepConv is tf.separableConv2d followed by the bias: the parameters
// prefix/depthwise_filter, prefix/pointwise_filter and prefix/bias.
func sepConv(x *tensor, w weights, prefix string, stride int, p padding) *tensor {
	d := depthwise3(x, w.get(prefix+"/depthwise_filter"), stride, p)
	return pointwise(d, w.get(prefix+"/pointwise_filter"), w.get(prefix+"/bias"))
}

// maxPool is tf.maxPool with a k x k window; "same" padding is ignored by
// the maximum, as in TensorFlow.
func maxPool(x *tensor, k, stride int, p padding) *tensor {
	oh, pt := outSize(x.h, k, stride, p)
	ow, pl := outSize(x.w, k, stride, p)
	out := newTensor(oh, ow, x.c)
	for oy := range oh {
		for ox := range ow {
			o := out.at(oy, ox)
			for i := range o {
				o[i] = float32(math.Inf(-1))
			}
			for ky := range k {
				iy := oy*stride + ky - pt
				if iy < 0 || iy >= x.h {
					continue
				}
				for kx := range k {
					ix := ox*stride + kx - pl
					if ix < 0 || ix >= x.w {
						continue
					}
					for i, v := range x.at(iy, ix) {
						o[i] = max(o[i], v)
					}
				}
			}
		}
	}
	return out
}

// avgPool is tf.avgPool with "valid" padding.
func avgPool(x *tensor, k, stride int) *tensor {
	oh, _ := outSize(x.h, k, stride, valid)
	ow, _ := outSize(x.w, k, stride, valid)
	out := newTensor(oh, ow, x.c)
	n := float32(k * k)
	for oy := range oh {
		for ox := range ow {
			o := out.at(oy, ox)
			for ky := range k {
				for kx := range k {
					for i, v := range x.at(oy*stride+ky, ox*stride+kx) {
						o[i] += v
					}
				}
			}
			for i := range o {
				o[i] /= n
			}
		}
	}
	return out
}

// add returns the element-wise sum of tensors of one shape.
func add(ts ...*tensor) *tensor {
	out := newTensor(ts[0].h, ts[0].w, ts[0].c)
	for _, t := range ts {
		if len(t.d) != len(out.d) {
			panic("add: shapes differ")
		}
		for i, v := range t.d {
			out.d[i] += v
		}
	}
	return out
}

// relu sets negative elements of t to zero, in place, and returns t.
func relu(t *tensor) *tensor {
	for i, v := range t.d {
		if v < 0 {
			t.d[i] = 0
		}
	}
	return t
}

// leaky is the leaky ReLU of face-api's tiny YOLO: x for x > 0, 0.1x else.
func leaky(t *tensor) *tensor {
	for i, v := range t.d {
		if v < 0 {
			t.d[i] = 0.1 * v
		}
	}
	return t
}

// scaleShift multiplies each channel by w and adds b, in place.
func scaleShift(t *tensor, w, b param) *tensor {
	for i := 0; i < len(t.d); i += t.c {
		px := t.d[i : i+t.c]
		for c := range px {
			px[c] = px[c]*w.d[c] + b.d[c]
		}
	}
	return t
}

// dense multiplies the vector x by the matrix w [len(x), n] and adds b.
func dense(x []float32, w, b param) []float32 {
	n := len(w.d) / len(x)
	out := make([]float32, n)
	if b.d != nil {
		copy(out, b.d)
	}
	for i, v := range x {
		axpy(out, w.d[i*n:i*n+n], v)
	}
	return out
}

func softmax(x []float32) []float32 {
	m := x[0]
	for _, v := range x {
		m = max(m, v)
	}
	out := make([]float32, len(x))
	var sum float64
	for i, v := range x {
		e := math.Exp(float64(v - m))
		out[i] = float32(e)
		sum += e
	}
	for i := range out {
		out[i] = float32(float64(out[i]) / sum)
	}
	return out
}

func sigmoid(x float32) float64 { return 1 / (1 + math.Exp(-float64(x))) }
