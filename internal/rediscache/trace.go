package rediscache

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// WithTracerProvider traces the Redis commands made for a traced request
// (a span per command or pipeline, below the request's). Commands outside
// any trace (the lock's notice listener, health probes, refreshes started
// by no request) make no span, so they never start traces of their own.
// Spans name the command, never its arguments: keys name images, values
// are answers, and a connection's AUTH carries the password. nil tp: no
// tracing.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *Cache) {
		if tp == nil {
			return
		}
		h := &tracingHook{tracer: tp.Tracer("github.com/regcap/regcap/internal/rediscache")}
		if cl, ok := c.rdb.(*redis.Client); ok {
			if host, port, err := net.SplitHostPort(cl.Options().Addr); err == nil {
				h.attrs = append(h.attrs, semconv.ServerAddress(host))
				if p, err := strconv.Atoi(port); err == nil {
					h.attrs = append(h.attrs, semconv.ServerPort(p))
				}
			}
		}
		c.rdb.AddHook(h)
	}
}

// connSetup are the commands of a new connection's handshake, not of the
// request: no span of their own (CLIENT SETINFO fails on older servers,
// by design, and would read as a failure of the request).
var connSetup = map[string]bool{"hello": true, "auth": true, "client": true, "select": true, "readonly": true}

// tracingHook is a go-redis hook that makes a client span per command,
// only inside a span.
type tracingHook struct {
	tracer trace.Tracer
	attrs  []attribute.KeyValue // server.address and port, when known
}

func (h *tracingHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *tracingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := strings.ToLower(cmd.Name())
		if connSetup[name] || !trace.SpanContextFromContext(ctx).IsValid() {
			return next(ctx, cmd)
		}
		ctx, span := h.start(ctx, name, name)
		err := next(ctx, cmd)
		h.end(span, err)
		return err
	}
}

func (h *tracingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !trace.SpanContextFromContext(ctx).IsValid() {
			return next(ctx, cmds)
		}
		names := make([]string, 0, len(cmds))
		setup := true
		for _, c := range cmds {
			n := strings.ToLower(c.Name())
			names = append(names, n)
			setup = setup && connSetup[n]
		}
		if setup {
			return next(ctx, cmds)
		}
		ctx, span := h.start(ctx, "pipeline", strings.Join(names, " "))
		span.SetAttributes(semconv.DBOperationBatchSize(len(cmds)))
		err := next(ctx, cmds)
		h.end(span, err)
		return err
	}
}

func (h *tracingHook) start(ctx context.Context, name, operation string) (context.Context, trace.Span) {
	return h.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(semconv.DBSystemNameRedis, semconv.DBOperationName(operation)),
		trace.WithAttributes(h.attrs...))
}

func (h *tracingHook) end(span trace.Span, err error) {
	// A nil reply (key absent) is an answer, not a failure.
	if err != nil && !errors.Is(err, redis.Nil) {
		span.SetStatus(codes.Error, "redis command failed")
		span.SetAttributes(semconv.ErrorTypeOther)
	}
	span.End()
}
