// Package client calls a regcap fleet over NATS: the three kubewarden/oci
// registry capabilities, as typed calls and as a waPC host-call function
// that Go policy hosts can plug in unchanged.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/contract"
)

// ErrUnreachable wraps failures to reach any worker: no responders, a
// timeout, or a closed connection. Callers may retry these.
var ErrUnreachable = errors.New("regcap fleet unreachable")

// Reply is a successful answer.
type Reply struct {
	Body []byte
	// Cache says where the answer came from: hit, miss, shared or stale.
	Cache contract.Outcome
	// Age is how long ago a stale answer was fetched (Regcap-Age).
	Age time.Duration
}

// Client is safe for concurrent use.
type Client struct {
	nc      *nats.Conn
	prefix  string
	timeout time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithSubjectPrefix sets the subject prefix (default "kubewarden").
func WithSubjectPrefix(p string) Option { return func(c *Client) { c.prefix = p } }

// WithTimeout bounds a call whose context has no deadline (default 30s:
// a worker answers within --lock-wait + --fetch-timeout, 20s by default,
// so a slow registry is reported as the worker's 504, not as a timeout).
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// New returns a Client over nc.
func New(nc *nats.Conn, opts ...Option) *Client {
	c := &Client{nc: nc, prefix: contract.DefaultSubjectPrefix, timeout: 30 * time.Second}
	for _, o := range opts {
		o(c)
	}
	return c
}

// CallOption adjusts one call.
type CallOption func(*nats.Msg)

// WithPlatform asks oci_manifest_config to resolve an index to platform
// "os/arch[/variant]" instead of the worker's default.
func WithPlatform(p string) CallOption {
	return func(m *nats.Msg) {
		if p != "" {
			m.Header.Set(contract.HeaderPlatform, p)
		}
	}
}

// Call sends a raw waPC payload (a JSON string) for fn. An error reply
// is a *contract.Error.
func (c *Client) Call(ctx context.Context, fn contract.Function, payload []byte, opts ...CallOption) (*Reply, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	m := nats.NewMsg(fn.Subject(c.prefix))
	m.Data = payload
	for _, o := range opts {
		o(m)
	}
	resp, err := c.nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			return nil, fmt.Errorf("%w: no worker subscribed to %s", ErrUnreachable, m.Subject)
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
			return nil, fmt.Errorf("%w: no reply on %s in time", ErrUnreachable, m.Subject)
		case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrDisconnected):
			return nil, fmt.Errorf("%w: %v", ErrUnreachable, err)
		}
		return nil, fmt.Errorf("request on %s: %w", m.Subject, err)
	}
	if code := resp.Header.Get(contract.HeaderErrorCode); code != "" {
		n, err := strconv.Atoi(code)
		if err != nil {
			n = 500
		}
		return nil, &contract.Error{Code: n, Message: resp.Header.Get(contract.HeaderError), RetryAfter: resp.Header.Get(contract.HeaderRetryAfter)}
	}
	r := &Reply{Body: resp.Data, Cache: contract.Outcome(resp.Header.Get(contract.HeaderCache))}
	if age, err := strconv.Atoi(resp.Header.Get(contract.HeaderAge)); err == nil && age >= 0 {
		r.Age = time.Duration(age) * time.Second
	}
	return r, nil
}

// Image calls fn for an image reference such as "busybox:latest".
func (c *Client) Image(ctx context.Context, fn contract.Function, image string, opts ...CallOption) (*Reply, error) {
	payload, err := json.Marshal(image)
	if err != nil {
		return nil, err
	}
	return c.Call(ctx, fn, payload, opts...)
}

// Digest returns the manifest digest of image ("sha256:…").
func (c *Client) Digest(ctx context.Context, image string) (string, error) {
	r, err := c.Image(ctx, contract.ManifestDigest, image)
	if err != nil {
		return "", err
	}
	var d struct {
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal(r.Body, &d); err != nil {
		return "", fmt.Errorf("decoding digest reply for %s: %w", image, err)
	}
	return d.Digest, nil
}

// Manifest returns image's manifest exactly as the registry sent it.
func (c *Client) Manifest(ctx context.Context, image string) ([]byte, error) {
	r, err := c.Image(ctx, contract.OCIManifest, image)
	if err != nil {
		return nil, err
	}
	return r.Body, nil
}

// ManifestConfig returns {"manifest":…,"digest":…,"config":…} for image,
// resolved to platform ("" for the worker's default).
func (c *Client) ManifestConfig(ctx context.Context, image, platform string) ([]byte, error) {
	r, err := c.Image(ctx, contract.OCIManifestConfig, image, WithPlatform(platform))
	if err != nil {
		return nil, err
	}
	return r.Body, nil
}

// HostCall has wapc-go's host-call signature and forwards every
// kubewarden/oci capability call to the fleet; it refuses the rest, so it
// can be chained in front of another host-call function.
func (c *Client) HostCall(ctx context.Context, binding, namespace, operation string, payload []byte) ([]byte, error) {
	if binding != "kubewarden" || namespace != "oci" {
		return nil, fmt.Errorf("regcap: unsupported host call %s/%s/%s", binding, namespace, operation)
	}
	fn, ok := contract.ParseOperation(operation)
	if !ok {
		return nil, fmt.Errorf("regcap: unsupported host call %s/%s/%s", binding, namespace, operation)
	}
	r, err := c.Call(ctx, fn, payload)
	if err != nil {
		return nil, err
	}
	return r.Body, nil
}
