package resolve

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/regcap/regcap/contract"
)

// WithTracerProvider traces resolutions: a span per resolution, below the
// request that started it, with a span per step (the Redis read or
// get-or-lock, the wait for a fetch slot, the wait for another worker's
// fetch, the fetch). Requests that join a resolution already running
// share its spans. nil tp: no tracing.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) {
		if tp != nil {
			o.tracer = tp.Tracer("github.com/regcap/regcap/internal/resolve")
		}
	}
}

// Attributes of the resolver's spans.
const (
	imageKey    = attribute.Key("regcap.image")
	registryKey = attribute.Key("regcap.registry")
	cacheKey    = attribute.Key("regcap.cache")
	codeKey     = attribute.Key("regcap.error.code")
)

// startResolution starts the span of q's resolution below ctx's span,
// and returns q carrying it; q unchanged when tracing is off or ctx
// holds no span.
func (r *Resolver) startResolution(ctx context.Context, q query) query {
	if r.tracer == nil || !trace.SpanContextFromContext(ctx).IsValid() {
		return q
	}
	_, q.span = r.tracer.Start(ctx, "resolve", trace.WithAttributes(imageKey.String(q.image), registryKey.String(q.registry)))
	return q
}

// endResolution ends q's resolution span with its outcome.
func (q query) endResolution(res resolved, err error) {
	if q.span == nil {
		return
	}
	endSpan(q.span, err, res.outcome)
}

// traced is ctx carrying q's resolution span, for the work the
// resolution does on contexts of its own (the resolver's life, a
// flight's): its Redis commands and registry requests are then the
// resolution's children. ctx as is when q is not traced.
func (q query) traced(ctx context.Context) context.Context {
	if q.span == nil {
		return ctx
	}
	return trace.ContextWithSpan(ctx, q.span)
}

// step is one step of a traced resolution; the zero step is not traced.
type step struct{ span trace.Span }

// startStep starts a step's span below ctx's span, if any.
func (r *Resolver) startStep(ctx context.Context, name string) (context.Context, step) {
	if r.tracer == nil || !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, step{}
	}
	ctx, span := r.tracer.Start(ctx, name)
	return ctx, step{span}
}

// end ends the step, failed with err's code when err is not nil.
func (s step) end(err error) {
	if s.span != nil {
		endSpan(s.span, err, "")
	}
}

func endSpan(span trace.Span, err error, outcome contract.Outcome) {
	switch {
	case err != nil:
		ce := contract.AsError(err)
		span.SetAttributes(codeKey.Int(ce.Code), semconv.ErrorTypeKey.String(strconv.Itoa(ce.Code)))
		// The message is the one the caller gets: bounded, and free of
		// credentials like every reply.
		span.SetStatus(codes.Error, ce.Message)
	case outcome != "":
		span.SetAttributes(cacheKey.String(string(outcome)))
	}
	span.End()
}
