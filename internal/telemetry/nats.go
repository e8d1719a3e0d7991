package telemetry

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// HeaderCarrier carries trace context in NATS message headers. nats.Header
// is case-sensitive, unlike HTTP's: names are written lowercase, as W3C
// trace context writes them (traceparent, tracestate, baggage), and read
// whatever their case, so that publishers in any language interoperate.
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key, matched case-insensitively.
func (h HeaderCarrier) Get(key string) string {
	if vs := h[key]; len(vs) > 0 {
		return vs[0]
	}
	for k, vs := range h {
		if len(vs) > 0 && strings.EqualFold(k, key) {
			return vs[0]
		}
	}
	return ""
}

// Set sets key, lowercase, replacing any value under another case.
func (h HeaderCarrier) Set(key, value string) {
	lk := strings.ToLower(key)
	for k := range h {
		if k != lk && strings.EqualFold(k, lk) {
			delete(h, k)
		}
	}
	h[lk] = []string{value}
}

// Keys lists the header names.
func (h HeaderCarrier) Keys() []string {
	out := make([]string, 0, len(h))
	for k := range h {
		out = append(out, k)
	}
	return out
}

// Inject writes ctx's trace context into m's headers with p, and only
// when ctx holds a span: a call made outside any trace sends the message
// as it would without tracing.
func Inject(ctx context.Context, p propagation.TextMapPropagator, m *nats.Msg) {
	if p == nil || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	if m.Header == nil {
		m.Header = nats.Header{}
	}
	p.Inject(ctx, HeaderCarrier(m.Header))
}

// Extract returns ctx with the trace context m's headers carry, if any:
// a message without headers costs nothing.
func Extract(ctx context.Context, p propagation.TextMapPropagator, m *nats.Msg) context.Context {
	if p == nil || len(m.Header) == 0 {
		return ctx
	}
	return p.Extract(ctx, HeaderCarrier(m.Header))
}
