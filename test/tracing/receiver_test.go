package tracing

import (
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"
)

// span is one span as the receiver got it, with its service.
type span struct {
	Service         string
	TraceID, SpanID string
	Parent          string
	Name            string
	Start, End      time.Time
	Attrs           map[string]string
	Status          string
	StatusCode      int32
}

func (s span) duration() time.Duration { return s.End.Sub(s.Start) }

// receiver is an OTLP/HTTP trace receiver: POST /v1/traces with an
// ExportTraceServiceRequest protobuf, as otlptracehttp sends it.
type receiver struct {
	URL string

	mu    sync.Mutex
	spans []span
	bad   []string // requests it could not decode
}

func startReceiver(t *testing.T) *receiver {
	rc := &receiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		var req coltracepb.ExportTraceServiceRequest
		if err == nil && (r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf") {
			err = fmt.Errorf("%s %s with Content-Type %q", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		if err == nil {
			err = proto.Unmarshal(body, &req)
		}
		if err != nil {
			rc.mu.Lock()
			rc.bad = append(rc.bad, err.Error())
			rc.mu.Unlock()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rc.add(&req)
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	rc.URL = srv.URL
	return rc
}

func value(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return fmt.Sprint(x.DoubleValue)
	default:
		return v.String()
	}
}

func (rc *receiver) add(req *coltracepb.ExportTraceServiceRequest) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.Key == "service.name" {
				service = value(a.Value)
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				sp := span{Service: service, TraceID: hex.EncodeToString(s.TraceId), SpanID: hex.EncodeToString(s.SpanId),
					Parent: hex.EncodeToString(s.ParentSpanId), Name: s.Name,
					Start: time.Unix(0, int64(s.StartTimeUnixNano)), End: time.Unix(0, int64(s.EndTimeUnixNano)),
					Attrs: map[string]string{}, Status: s.GetStatus().GetMessage(), StatusCode: int32(s.GetStatus().GetCode())}
				for _, a := range s.Attributes {
					sp.Attrs[a.Key] = value(a.Value)
				}
				for _, e := range s.Events {
					sp.Attrs["event:"+e.Name] = fmt.Sprint(e.Attributes)
				}
				rc.spans = append(rc.spans, sp)
			}
		}
	}
}

// all returns a copy of the spans received so far.
func (rc *receiver) all() []span {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]span(nil), rc.spans...)
}

// trace returns the spans of one trace.
func (rc *receiver) trace(id string) []span {
	var out []span
	for _, s := range rc.all() {
		if s.TraceID == id {
			out = append(out, s)
		}
	}
	return out
}

// tree draws a trace: each span under its parent, with its service,
// duration and the attributes that tell what it did.
func tree(spans []span) string {
	children := map[string][]span{}
	ids := map[string]bool{}
	for _, s := range spans {
		ids[s.SpanID] = true
	}
	for _, s := range spans {
		p := s.Parent
		if !ids[p] {
			p = "" // a root, or its parent is not in this process's export
		}
		children[p] = append(children[p], s)
	}
	for _, c := range children {
		sort.Slice(c, func(i, j int) bool { return c[i].Start.Before(c[j].Start) })
	}
	var b strings.Builder
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		for _, s := range children[parent] {
			var keys []string
			for k := range s.Attrs {
				switch {
				case strings.HasPrefix(k, "regcap."), k == "http.response.status_code", k == "server.address", k == "db.operation.name", k == "messaging.destination.name", k == "error.type":
					keys = append(keys, k+"="+s.Attrs[k])
				}
			}
			sort.Strings(keys)
			fmt.Fprintf(&b, "%s%s [%s] %s  %s\n", strings.Repeat("  ", depth), s.Name, s.Service, s.duration().Round(10*time.Microsecond), strings.Join(keys, " "))
			walk(s.SpanID, depth+1)
		}
	}
	walk("", 0)
	return b.String()
}
