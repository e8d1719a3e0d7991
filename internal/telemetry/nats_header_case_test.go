package telemetry

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/trace"
)

const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestHeaderCase: traceparent is read whatever the case a publisher
// wrote it in, and written lowercase.
func TestHeaderCase(t *testing.T) {
	p := Propagator()
	for _, name := range []string{"traceparent", "Traceparent", "TRACEPARENT", "TraceParent"} {
		m := nats.NewMsg("s")
		m.Header[name] = []string{parent}
		sc := trace.SpanContextFromContext(Extract(context.Background(), p, m))
		if !sc.IsValid() || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || sc.SpanID().String() != "00f067aa0ba902b7" || !sc.IsRemote() {
			t.Errorf("header %q: got %+v, want the parent's trace continued", name, sc)
		}
	}
	// Written lowercase, replacing another case.
	m := nats.NewMsg("s")
	m.Header["Traceparent"] = []string{"00-00000000000000000000000000000001-0000000000000001-01"}
	ctx := Extract(context.Background(), p, &nats.Msg{Header: nats.Header{"traceparent": {parent}}})
	Inject(ctx, p, m)
	if got := m.Header["traceparent"]; len(got) != 1 || got[0] != parent {
		t.Errorf("written traceparent = %q, want %q", got, parent)
	}
	if _, ok := m.Header["Traceparent"]; ok {
		t.Error("the old Traceparent header was kept beside the new one")
	}
}

// TestNoSpanNoHeader: outside a span nothing is written, and a message
// without headers gets no header map.
func TestNoSpanNoHeader(t *testing.T) {
	m := &nats.Msg{Subject: "s"}
	Inject(context.Background(), Propagator(), m)
	if m.Header != nil {
		t.Errorf("headers %v written outside any span", m.Header)
	}
	if ctx := Extract(context.Background(), Propagator(), m); trace.SpanContextFromContext(ctx).IsValid() {
		t.Error("a span context from a message without headers")
	}
}

// TestMalformedTraceparent: a traceparent that does not parse starts no
// trace of its own and is not an error.
func TestMalformedTraceparent(t *testing.T) {
	for _, v := range []string{"", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", parent + "x"} {
		m := &nats.Msg{Header: nats.Header{"traceparent": {v}}}
		if sc := trace.SpanContextFromContext(Extract(context.Background(), Propagator(), m)); sc.IsValid() {
			t.Errorf("traceparent %q gave a valid parent %v", v, sc)
		}
	}
}
