package queue

import (
	"context"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/telemetry"
)

// Attributes of the front span beyond the semantic conventions'.
const (
	CacheKey    = attribute.Key("regcap.cache")    // hit, miss, shared, stale
	FunctionKey = attribute.Key("regcap.function") // manifest_digest, …
	PlatformKey = attribute.Key("regcap.platform") // Regcap-Platform, when sent
	CodeKey     = attribute.Key("regcap.error.code")
)

// WithTracerProvider traces every request: a consumer span per message,
// continuing the trace its traceparent header names (read whatever its
// case) or starting one. nil tp: no tracing, and no header is read.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(s *Server) {
		if tp != nil {
			s.tracer = tp.Tracer("github.com/regcap/regcap/internal/queue")
			s.prop = telemetry.Propagator()
		}
	}
}

// ExemplarObserver is an Observer that can also link a request's
// latency to its trace (a Prometheus exemplar).
type ExemplarObserver interface {
	RequestTraced(fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration, traceID string)
}

// frontSpan is a request's span; nil when tracing is off.
type frontSpan struct {
	ctx  context.Context
	span trace.Span
}

// startSpan starts the span of request m on fn's subject.
func (s *Server) startSpan(m *nats.Msg, fn contract.Function, platform string) *frontSpan {
	ctx := telemetry.Extract(context.Background(), s.prop, m)
	attrs := []attribute.KeyValue{
		semconv.MessagingSystemKey.String("nats"),
		semconv.MessagingDestinationName(m.Subject),
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationName("process"),
		semconv.MessagingConsumerGroupName(s.queueGroup),
		semconv.MessagingMessageBodySize(len(m.Data)),
		FunctionKey.String(fn.Name()),
	}
	if platform != "" {
		attrs = append(attrs, PlatformKey.String(platform))
	}
	ctx, span := s.tracer.Start(ctx, "process "+m.Subject, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
	return &frontSpan{ctx: ctx, span: span}
}

// context is the request's context for the resolver: parent with the
// span, parent alone when tracing is off.
func (f *frontSpan) context(parent context.Context) context.Context {
	if f == nil {
		return parent
	}
	return trace.ContextWithSpan(parent, f.span)
}

// end ends the span with the answer's outcome or its error code.
func (f *frontSpan) end(code int, outcome contract.Outcome) {
	if f == nil {
		return
	}
	if code != 0 {
		f.span.SetAttributes(CodeKey.Int(code), semconv.ErrorTypeKey.String(strconv.Itoa(code)))
		if code >= 500 {
			f.span.SetStatus(codes.Error, strconv.Itoa(code))
		}
	} else {
		f.span.SetAttributes(CacheKey.String(string(outcome)))
	}
	f.span.End()
}

// observe hands the outcome to the observer, with the trace ID when the
// request's trace is sampled and the observer can keep it.
func (s *Server) observe(f *frontSpan, fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration) {
	if f != nil {
		if eo, ok := s.obs.(ExemplarObserver); ok {
			if id := telemetry.SampledTraceID(f.ctx); id != "" {
				eo.RequestTraced(fn, code, outcome, elapsed, id)
				return
			}
		}
	}
	s.obs.Request(fn, code, outcome, elapsed)
}
