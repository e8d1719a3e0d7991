package registry

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// TracedTransport wraps base (a WithBaseTransport function) so that every
// HTTP request to a registry, its token service or its blob storage is a
// client span below the request that caused it, with the HTTP semantic
// conventions: method, server.address and port, the status, and url.full
// without its query and user info. Presigned blob-storage URLs carry
// credentials in their query (X-Amz-Credential, X-Amz-Signature, sig),
// and token requests their scope and account: none of that, nor any
// header (Authorization, Cookie), is ever recorded. Requests made outside
// any trace make no span. The trace context is not sent to registries:
// they are third parties, and their traces are not ours. nil tp returns
// base unchanged.
func TracedTransport(tp trace.TracerProvider, base func(host string) http.RoundTripper) func(host string) http.RoundTripper {
	if tp == nil {
		return base
	}
	tracer := tp.Tracer("github.com/regcap/regcap/internal/registry")
	return func(host string) http.RoundTripper {
		return &tracedTransport{tracer: tracer, next: base(host), registry: host}
	}
}

type tracedTransport struct {
	tracer   trace.Tracer
	next     http.RoundTripper
	registry string
}

// RegistryKey is the attribute naming the registry a request was made
// for, which differs from server.address for token and blob requests.
const RegistryKey = attribute.Key("regcap.registry")

func (t *tracedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx := r.Context()
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return t.next.RoundTrip(r)
	}
	attrs := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String(r.Method),
		semconv.URLFull(safeURL(r.URL)),
		RegistryKey.String(t.registry),
	}
	host, port := r.URL.Hostname(), r.URL.Port()
	attrs = append(attrs, semconv.ServerAddress(host))
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[r.URL.Scheme]
	}
	if p, err := strconv.Atoi(port); err == nil {
		attrs = append(attrs, semconv.ServerPort(p))
	}
	ctx, span := t.tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	defer span.End()
	resp, err := t.next.RoundTrip(r.WithContext(ctx))
	if err != nil {
		span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
		span.SetStatus(codes.Error, errorType(err))
		return resp, err
	}
	span.SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode))
	if resp.StatusCode >= 400 {
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(resp.StatusCode)))
		span.SetStatus(codes.Error, "")
	}
	return resp, err
}

// safeURL is u as a span may show it: scheme, host and path only.
func safeURL(u *url.URL) string {
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}).String()
}

// errorType names a transport failure by kind, never by its message
// (which may quote a URL).
func errorType(err error) string {
	var ne net.Error
	var oe *net.OpError
	var de *net.DNSError
	var re tls.RecordHeaderError
	var ve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &de):
		return "dns"
	case errors.As(err, &re), errors.As(err, &ve):
		// An insecure source is tried over HTTPS first, then plain HTTP.
		return "tls"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.As(err, &oe):
		return oe.Op
	default:
		return "_OTHER"
	}
}
