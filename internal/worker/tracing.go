package worker

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/telemetry"
)

// setupTracing configures OpenTelemetry from the OTEL_* environment
// (see package telemetry and docs/tracing.md): off, at no cost, unless
// an OTLP endpoint is set.
func (w *Worker) setupTracing(ctx context.Context) error {
	p, err := telemetry.Setup(ctx, telemetry.WithServiceName("regcap-worker"), telemetry.WithVersion(w.cfg.Version),
		telemetry.WithLogger(w.log.Named("tracing")))
	if err != nil {
		return err
	}
	w.tracing = p
	if p.Enabled() {
		w.log.Info("tracing: exporting spans over OTLP (OTEL_* environment)")
	}
	return nil
}

// stopTracing exports the spans still buffered, for a few seconds at
// most: a collector that is down does not hold up the exit.
func (w *Worker) stopTracing() {
	if !w.tracing.Enabled() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.tracing.Shutdown(ctx); err != nil {
		w.log.Warn("tracing: spans lost at shutdown", zap.Error(err))
	}
}

// wrapBase is the registry base transport: counted and timed by the
// metrics, inside a span per request when tracing (the span outside, so
// that the latency's exemplar names its trace).
func (w *Worker) wrapBase(base func(host string) http.RoundTripper) func(host string) http.RoundTripper {
	return registry.TracedTransport(w.tracing.TracerProvider(), w.metrics.WrapBase(base))
}

// RequestTraced hands a traced request's outcome to each member, with
// its trace ID to those that keep exemplars.
func (o observers) RequestTraced(fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration, traceID string) {
	for _, x := range o {
		if eo, ok := x.(interface {
			RequestTraced(contract.Function, int, contract.Outcome, time.Duration, string)
		}); ok {
			eo.RequestTraced(fn, code, outcome, elapsed, traceID)
			continue
		}
		x.Request(fn, code, outcome, elapsed)
	}
}
