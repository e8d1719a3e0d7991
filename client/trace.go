package client

import (
	"context"
	"errors"
	"strconv"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/telemetry"
)

// WithTracerProvider makes a client span of each call ("send" and the
// subject), its trace context sent to the worker in the message's
// traceparent header (lowercase, as W3C writes it). Without it, a call
// made inside a span still carries that span's context, with the
// process's global propagator, and makes no span of its own; a call
// outside any span sends no header. nil tp: as without it.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *Client) {
		if tp != nil {
			c.tracer = tp.Tracer("github.com/regcap/regcap/client")
			c.prop = telemetry.Propagator()
		}
	}
}

// callSpan is a call's span; nil when the client makes none.
type callSpan struct{ span trace.Span }

// startSpan starts m's span when the client traces, and writes the trace
// context of ctx (then the new span's) into m's headers.
func (c *Client) startSpan(ctx context.Context, fn contract.Function, m *nats.Msg) (context.Context, *callSpan) {
	var cs *callSpan
	if c.tracer != nil {
		var span trace.Span
		ctx, span = c.tracer.Start(ctx, "send "+m.Subject, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
			semconv.MessagingSystemKey.String("nats"),
			semconv.MessagingDestinationName(m.Subject),
			semconv.MessagingOperationTypeSend,
			semconv.MessagingOperationName("send"),
			semconv.MessagingMessageBodySize(len(m.Data)),
			attrFunction.String(fn.Name()),
		))
		cs = &callSpan{span: span}
	}
	if trace.SpanContextFromContext(ctx).IsValid() {
		p := c.prop
		if p == nil {
			p = otel.GetTextMapPropagator()
		}
		telemetry.Inject(ctx, p, m)
	}
	return ctx, cs
}

// Attributes of a call's span beyond the semantic conventions', named
// as the worker's span names them.
const (
	attrFunction = attribute.Key("regcap.function")
	attrCache    = attribute.Key("regcap.cache")
)

// end ends the span with the call's outcome.
func (cs *callSpan) end(r *Reply, err error) {
	if cs == nil {
		return
	}
	var ce *contract.Error
	switch {
	case err == nil:
		cs.span.SetAttributes(attrCache.String(string(r.Cache)))
	case errors.As(err, &ce):
		cs.span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(ce.Code)))
		cs.span.SetStatus(codes.Error, strconv.Itoa(ce.Code))
	default:
		cs.span.SetAttributes(semconv.ErrorTypeKey.String("unreachable"))
		cs.span.SetStatus(codes.Error, err.Error())
	}
	cs.span.End()
}
