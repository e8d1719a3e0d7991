package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/regcap/regcap/internal/telemetry"
)

// startTracing configures tracing from the OTEL_* environment, as the
// worker does (docs/tracing.md): every call is then a span whose trace
// the worker continues. It returns nil when tracing is off, and a stop
// that exports what is buffered.
func startTracing(ctx context.Context, stderr io.Writer) (trace.TracerProvider, func(), error) {
	p, err := telemetry.Setup(ctx, telemetry.WithServiceName("regcap-requester"), telemetry.WithVersion(version))
	if err != nil {
		return nil, nil, err
	}
	return p.TracerProvider(), func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(sctx); err != nil {
			fmt.Fprintln(stderr, "requester: tracing: spans lost:", err)
		}
	}, nil
}
