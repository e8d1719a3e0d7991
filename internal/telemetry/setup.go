// Package telemetry sets up OpenTelemetry tracing the standard way, from
// the OTEL_* environment variables, and carries W3C trace context in
// NATS message headers. Tracing is off unless an OTLP endpoint is
// configured: Setup then returns a Provider whose TracerProvider is nil,
// and every instrumented path checks that once, so a hit costs what it
// cost before tracing existed.
package telemetry

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
)

// Provider is the process's tracing: a TracerProvider when tracing is
// configured, nothing otherwise. A nil *Provider is off.
type Provider struct {
	tp *sdktrace.TracerProvider
}

// TracerProvider is the provider to instrument with, nil when tracing is
// off: callers skip their instrumentation altogether then.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if p == nil || p.tp == nil {
		return nil
	}
	return p.tp
}

// Enabled reports whether spans are exported.
func (p *Provider) Enabled() bool { return p != nil && p.tp != nil }

// Shutdown exports the spans still buffered and stops the exporter,
// within ctx. It is a no-op when tracing is off.
func (p *Provider) Shutdown(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	return p.tp.Shutdown(ctx)
}

// Propagator is the W3C trace context and baggage, the propagator of
// every front and client.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

type config struct {
	service  string
	version  string
	log      *zap.Logger
	getenv   func(string) string
	exporter sdktrace.SpanExporter
}

// Option configures Setup.
type Option func(*config)

// WithServiceName is service.name when OTEL_SERVICE_NAME does not say.
func WithServiceName(s string) Option { return func(c *config) { c.service = s } }

// WithVersion is service.version.
func WithVersion(v string) Option { return func(c *config) { c.version = v } }

// WithLogger logs the exporter's errors (a collector that is down) and
// what Setup configured.
func WithLogger(l *zap.Logger) Option { return func(c *config) { c.log = l } }

// WithGetenv replaces os.Getenv, for tests.
func WithGetenv(f func(string) string) Option { return func(c *config) { c.getenv = f } }

// WithExporter exports to e whatever the environment says (tests).
func WithExporter(e sdktrace.SpanExporter) Option { return func(c *config) { c.exporter = e } }

// ConfigError says which OTEL_* variable has a value Setup cannot use.
type ConfigError struct {
	Variable, Value, Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("%s=%q: %s", e.Variable, e.Value, e.Reason)
}

// Setup configures tracing from the environment, as the OpenTelemetry
// specification names it:
//
//   - OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none: off.
//   - OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT:
//     where spans go. Unlike the specification's default
//     (localhost:4318), neither set means off: a worker never sends
//     spans nobody asked for.
//   - OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: http/protobuf (default) or
//     grpc.
//   - OTEL_EXPORTER_OTLP_(TRACES_)HEADERS, _TIMEOUT, _COMPRESSION,
//     _CERTIFICATE, _INSECURE: read by the exporter itself.
//   - OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_*,
//     OTEL_SPAN_*_LIMIT: read by the SDK itself (default
//     parentbased_always_on).
//   - OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES: the resource.
//
// When tracing is on, the provider and the W3C propagator are also made
// the process's globals, for libraries that use them. The returned
// Provider is never nil; Shutdown it before exiting.
func Setup(ctx context.Context, opts ...Option) (*Provider, error) {
	c := config{service: "regcap", log: zap.NewNop(), getenv: os.Getenv}
	for _, o := range opts {
		o(&c)
	}
	env := func(names ...string) (string, string) {
		for _, n := range names {
			if v := strings.TrimSpace(c.getenv(n)); v != "" {
				return n, v
			}
		}
		return names[len(names)-1], ""
	}
	if _, v := env("OTEL_SDK_DISABLED"); strings.EqualFold(v, "true") {
		return &Provider{}, nil
	}
	switch n, v := env("OTEL_TRACES_EXPORTER"); strings.ToLower(v) {
	case "none":
		return &Provider{}, nil
	case "", "otlp":
	default:
		return nil, &ConfigError{n, v, "only otlp and none are supported"}
	}
	exp := c.exporter
	if exp == nil {
		_, endpoint := env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
		if endpoint == "" {
			return &Provider{}, nil
		}
		var err error
		if exp, err = newExporter(ctx, env); err != nil {
			return nil, err
		}
	}
	attrs := []resource.Option{
		resource.WithAttributes(semconv.ServiceName(c.service)),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessPID(),
		// Last: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
		resource.WithFromEnv(),
	}
	if c.version != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceVersion(c.version)))
	}
	res, err := resource.New(ctx, attrs...)
	if err != nil && res == nil {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	// The sampler comes from OTEL_TRACES_SAMPLER inside the SDK.
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	log := c.log
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: spans not exported", zap.Error(err))
	}))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(Propagator())
	return &Provider{tp: tp}, nil
}

// newExporter is the OTLP exporter for the protocol the environment
// names; the exporters read their own endpoint, headers, TLS and timeout
// variables.
func newExporter(ctx context.Context, env func(...string) (string, string)) (sdktrace.SpanExporter, error) {
	n, proto := env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
	switch proto {
	case "", "http/protobuf":
		return otlptracehttp.New(ctx)
	case "grpc":
		return otlptracegrpc.New(ctx)
	case "http/json":
		return nil, &ConfigError{n, proto, "http/json is not supported by the Go exporter: use http/protobuf or grpc"}
	default:
		return nil, &ConfigError{n, proto, "want http/protobuf or grpc"}
	}
}
