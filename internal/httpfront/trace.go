package httpfront

import (
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/telemetry"
)

// WithTracerProvider traces every request with otelhttp: a server span
// named by method and route (GET /v1/{function}), with the HTTP semantic
// conventions, continuing the caller's traceparent or starting a trace.
// The resolutions it starts are its children. nil tp: no tracing.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(h *Handler) { h.tp = tp }
}

// traced is next, traced when a tracer provider was given.
func (h *Handler) traced(next http.Handler) http.Handler {
	if h.tp == nil {
		return next
	}
	return otelhttp.NewHandler(next, "regcap-http",
		otelhttp.WithTracerProvider(h.tp),
		otelhttp.WithPropagators(telemetry.Propagator()),
		// Before routing the pattern is unknown; otelhttp renames the
		// span with it once the mux has matched.
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			if r.Pattern != "" {
				return r.Pattern
			}
			return r.Method
		}),
	)
}

// annotate adds the function, platform and cache outcome of a plain
// request to its span.
func (h *Handler) annotate(r *http.Request, fn contract.Function, outcome contract.Outcome) {
	if h.tp == nil {
		return
	}
	attrs := []attribute.KeyValue{attribute.String("regcap.function", fn.Name())}
	if outcome != "" {
		attrs = append(attrs, attribute.String("regcap.cache", string(outcome)))
	}
	if p := r.Header.Get(contract.HeaderPlatform); p != "" {
		attrs = append(attrs, attribute.String("regcap.platform", p))
	}
	trace.SpanFromContext(r.Context()).SetAttributes(attrs...)
}
