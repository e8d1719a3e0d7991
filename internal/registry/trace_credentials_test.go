package registry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// TestTracedTransportKeepsCredentialsOut: a registry request's span has
// its method, host, port and status, and never a credential: not the
// Authorization header, not the user info of the URL, not a presigned
// query string (the blob-storage redirect), not the token request's
// query. Outside a span no span is made.
func TestTracedTransportKeepsCredentialsOut(t *testing.T) {
	secrets := []string{"s3cr3t-pass", "AKIAEXAMPLECRED", "sig-0123456789abcdef", "Bearer tok-123", "account=robot"}
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("blob")) }))
	defer storage.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/token":
			w.WriteHeader(http.StatusUnauthorized)
		default:
			http.Redirect(w, r, storage.URL+"/blob?X-Amz-Credential=AKIAEXAMPLECRED&X-Amz-Signature=sig-0123456789abcdef", http.StatusTemporaryRedirect)
		}
	}))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	rt := TracedTransport(tp, func(string) http.RoundTripper { return http.DefaultTransport })(host)
	c := &http.Client{Transport: rt}

	// Outside any span: nothing recorded.
	req, _ := http.NewRequest(http.MethodGet, reg.URL+"/token?scope=repository:app:pull&account=robot", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := len(rec.Ended()); n != 0 {
		t.Fatalf("%d spans outside any trace, want 0", n)
	}

	ctx, parent := tp.Tracer("test").Start(context.Background(), "fetch")
	for _, u := range []string{
		"http://robot:s3cr3t-pass@" + host + "/token?scope=repository:app:pull&account=robot",
		reg.URL + "/v2/app/blobs/sha256:abc",
	} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		req.Header.Set("Authorization", "Bearer tok-123")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	parent.End()

	spans := rec.Ended()
	if len(spans) != 4 { // token 401; blob 307, then storage 200; the parent
		t.Fatalf("%d spans, want 4", len(spans))
	}
	statuses := map[int64]int{}
	for _, s := range spans {
		text := s.Name() + " " + s.Status().Description
		for _, a := range s.Attributes() {
			text += " " + string(a.Key) + "=" + a.Value.String()
			if a.Key == "http.response.status_code" {
				statuses[a.Value.AsInt64()]++
			}
		}
		for _, e := range s.Events() {
			text += " " + e.Name
			for _, a := range e.Attributes {
				text += " " + a.Value.String()
			}
		}
		for _, sec := range secrets {
			if strings.Contains(text, sec) {
				t.Errorf("span %q holds %q: %s", s.Name(), sec, text)
			}
		}
		if s.Name() == "GET" && s.Parent().SpanID() != parent.SpanContext().SpanID() {
			t.Errorf("span %s is not a child of the request's span", s.Name())
		}
	}
	if statuses[401] != 1 || statuses[307] != 1 || statuses[200] != 1 {
		t.Errorf("statuses %v, want one each of 401, 307 and 200", statuses)
	}
}
