package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vmfest/vmfest"
	"github.com/vmfest/vmfest/api/wire"
	"github.com/vmfest/vmfest/model"
)

// panicky is a Server whose hardware listing and setup-model panic.
type panicky struct{ vmfest.Server }

func (panicky) HardwareModels(context.Context) ([]string, error) { panic("boom") }

func (panicky) SetupModel(context.Context, string, vmfest.SetupOptions) (model.ImageModel, error) {
	panic("boom in an operation")
}

// TestPanicsAreContained: a panic in a request answers 500 with a JSON
// error and the server goes on serving; a panic in an operation fails the
// operation.
func TestPanicsAreContained(t *testing.T) {
	e := newEnv(t)
	s, err := New(context.Background(), panicky{e.local}, Config{Home: e.home, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := s.Handler()
	send := func(method, path, body string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		return rec
	}
	rec := send("GET", "/v1/hardware", "")
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("panicking handler: %d", rec.Code)
	}
	var we wire.Error
	if err := json.Unmarshal(rec.Body.Bytes(), &we); err != nil || we.Code != wire.CodeInternal || strings.Contains(we.Error, "boom") {
		t.Fatalf("body %q: the panic's value must stay in the log", rec.Body)
	}
	if rec := send("GET", "/v1/machines", ""); rec.Code != http.StatusOK {
		t.Fatalf("after a panic: %d", rec.Code)
	}

	rec = send("POST", "/v1/models", `{"source":"http://127.0.0.1:1/x.img"}`)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("setup-model: %d %s", rec.Code, rec.Body)
	}
	var op wire.Operation
	json.Unmarshal(rec.Body.Bytes(), &op)
	rec = send("GET", "/v1/operations/"+op.ID+"/wait?timeout=30s", "")
	json.Unmarshal(rec.Body.Bytes(), &op)
	if op.Status != wire.Failed || op.Error == nil || op.Error.Code != wire.CodeInternal {
		t.Fatalf("operation after a panic: %+v", op)
	}
	if !strings.Contains(send("GET", "/metrics", "").Body.String(), "vmfest_http_panics_total 1") {
		t.Error("the panic is not counted")
	}
}
