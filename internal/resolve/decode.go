package resolve

import (
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/handlers"
)

// query is a decoded request and what the resolver derives from it once.
type query struct {
	req      handlers.Request
	key      string // cache key
	image    string // normalised reference, for messages
	registry string // its registry host, for the fetch slots
	ttl      time.Duration
	span     trace.Span // its resolution's, when traced (trace.go)
}

// decode turns req into a query. A repeated request skips the reference
// parser: on a hit its cost bounds the throughput of a NATS subject,
// whose callback is serial.
func (r *Resolver) decode(req Request) (query, error) {
	if req.Function != contract.OCIManifestConfig {
		req.Platform = "" // read by oci_manifest_config only
	}
	if len(req.Payload) > contract.MaxPayload || len(req.Platform) > contract.MaxPlatform {
		// Refused by the parser, cheaply: never copied into a key.
		if _, err := handlers.ParseRequest(req.Function, req.Payload, req.Platform, r.platform); err != nil {
			return query{}, err
		}
		return query{}, contract.Errorf(contract.CodeInternal, "request over its bounds was not refused")
	}
	raw := rawKey(req)
	if q, ok := r.decoded.GetIfPresent(raw); ok {
		return q, nil
	}
	cr, err := handlers.ParseRequest(req.Function, req.Payload, req.Platform, r.platform)
	if err != nil {
		return query{}, err
	}
	q := query{req: cr, key: cr.Key(), image: cr.Ref.Name(), registry: cr.Ref.Context().RegistryStr(), ttl: r.ttl}
	if cr.Immutable() {
		q.ttl = r.immutableTTL
	}
	r.decoded.Set(raw, q)
	return q, nil
}

// rawKey identifies a request by its bytes: the function, the platform
// header (config only: decode drops it for the others) and the payload.
func rawKey(req Request) string {
	return string(req.Function) + "\x00" + req.Platform + "\x00" + string(req.Payload)
}

// failed logs a request that got an error answer, and returns the
// error as every front sends it: a *contract.Error whose message is one
// line of at most contract.MaxMessage bytes.
func (r *Resolver) failed(fn contract.Function, err error, fields ...zap.Field) *contract.Error {
	ce := contract.AsError(err)
	if msg := contract.Bound(ce.Message); msg != ce.Message {
		ce = &contract.Error{Code: ce.Code, Message: msg, RetryAfter: ce.RetryAfter}
	}
	// A 4xx is the caller's or the image's business, counted in the
	// metrics; a 5xx may need an operator.
	lvl := zap.DebugLevel
	if ce.Code >= 500 {
		lvl = zap.WarnLevel
	}
	r.log.Log(lvl, "request failed", append(fields, zap.String("function", string(fn)),
		zap.Int("code", ce.Code), zap.String("message", ce.Message))...)
	return ce
}

// Key is the cache key req's answer is kept under, or req's 400 when it
// does not decode: requests with one key have one answer, however they
// spell the image (busybox, docker.io/library/busybox:latest). It does
// not block.
func (r *Resolver) Key(req Request) (string, error) {
	q, err := r.decode(req)
	if err != nil {
		return "", contract.AsError(err)
	}
	return q.key, nil
}
