// Copyright 2026 The UPM Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/upm-project/upm/examples/imageclass/classifier"
)

// Ready is the line the imageclass command prints on stdout, as JSON, once
// its models are loaded and advised and it listens (see
// examples/imageclass/main.go).
type Ready struct {
	Ready bool `json:"ready"`
	// PID is the instance's process ID as it sees it: 1 in a new PID
	// namespace.
	PID  int    `json:"pid"`
	Addr string `json:"addr"`
	classifier.LoadStats
}

// instance is one running imageclass process.
type instance struct {
	name   string
	cmd    *exec.Cmd
	cgroup string
	// started is when the harness started it, and readyAt when its ready
	// line arrived; both zero until then.
	started, readyAt time.Time
	ready            chan Ready
	// stderr keeps the instance's last stderr lines, for errors.
	stderr *tailBuffer
}

// pid is the instance's process ID in the harness's PID namespace.
func (inst *instance) pid() int { return inst.cmd.Process.Pid }

// readReady forwards the instance's ready line to inst.ready and then
// discards its output; it closes inst.ready when the output ends.
func (inst *instance) readReady(stdout io.Reader) {
	defer close(inst.ready)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var r Ready
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Ready {
			inst.ready <- r
			_, _ = io.Copy(io.Discard, stdout)
			return
		}
	}
}

// stop asks the instance to shut down (SIGTERM, as a platform scaling in
// would) and kills it if it has not exited after grace.
func (inst *instance) stop(grace time.Duration) {
	if inst.cmd == nil || inst.cmd.Process == nil {
		return
	}
	_ = inst.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		_ = inst.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(grace):
		_ = inst.cmd.Process.Kill()
		<-done
	}
}

// failure describes why an instance did not become ready.
func (inst *instance) failure() string {
	msg := "exited before it was ready"
	if st := inst.cmd.ProcessState; st != nil {
		msg += " (" + st.String() + ")"
	}
	if tail := strings.TrimSpace(inst.stderr.String()); tail != "" {
		msg += ": " + tail
	}
	return msg
}

// request is what the harness asks every instance once it is measured: a
// real request to the function, whose answer is checked.
type request struct {
	// Body is the image sent, and Query the query string of /classify.
	Body  []byte
	Query string
	// Want is the expression the first face must have.
	Want string
}

// classifyRequest returns the request of mode (UPM_BENCH_CLASSIFY): "face"
// sends the face of sample2.jpg, cropped once by the harness, for the
// detector at a small input size and the expression network, so that one
// request costs about a second of emulated CPU; "full" sends the whole photo
// through every network at the default input size; "none" sends nothing.
func classifyRequest(mode, modelDir string) (*request, error) {
	switch mode {
	case "", "face":
		face, err := classifier.Sample2FaceImage(modelDir)
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		if err := png.Encode(&b, face); err != nil {
			return nil, err
		}
		return &request{Body: b.Bytes(), Query: "input_size=" + faceInputSize + "&max_faces=1&models=face_expression_model", Want: sampleExpression}, nil
	case "full":
		b, err := os.ReadFile(filepath.Join(modelDir, "sample2.jpg"))
		if err != nil {
			return nil, err
		}
		return &request{Body: b, Want: sampleExpression}, nil
	case "none":
		return nil, nil
	}
	return nil, fmt.Errorf("UPM_BENCH_CLASSIFY=%q: want face, full or none", mode)
}

// faceInputSize is the detector's input size for the cropped face: the face
// fills the crop, so a small size will do; 128 is the smallest at which the
// detector finds it with a clear margin (64 scores 0.555 against the 0.5
// threshold; 96 finds nothing; 160 and 192 call it "neutral").
const faceInputSize = "128"

// sampleExpression is what face-api's expression network says of the face in
// sample2.jpg (see examples/imageclass/classifier's tests).
const sampleExpression = "sad"

// send sends req to the instance at addr and checks the answer.
func (req *request) send(ctx context.Context, addr string) (time.Duration, error) {
	start := time.Now()
	url := "http://" + addr + "/classify"
	if req.Query != "" {
		url += "?" + req.Query
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req.Body))
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("POST %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	var res classifier.Result
	if err := json.Unmarshal(body, &res); err != nil {
		return 0, fmt.Errorf("POST %s: %w", url, err)
	}
	if len(res.Faces) == 0 {
		return 0, fmt.Errorf("POST %s: no face found", url)
	}
	if got := res.Faces[0].Expression; got != req.Want {
		return 0, fmt.Errorf("POST %s: expression %q, want %q", url, got, req.Want)
	}
	return time.Since(start), nil
}

// tailBuffer keeps the last bytes written to it (an instance's stderr) and
// passes them on to out.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
	out io.Writer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.out != nil {
		_, _ = t.out.Write(p)
	}
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
