package registry

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/maypok86/otter/v2"
)

// DefaultMaxHosts bounds how many hosts (registries and blob storage
// hosts) keep a transport, with its idle connections, at a time.
const DefaultMaxHosts = 1024

// Transports is the base HTTP transport of every registry connection: one
// *http.Transport per host (at most maxHosts kept; an evicted host's idle
// connections are closed, and connections still in use when it is evicted
// close after the transport's idle timeout), each with that host's TLS settings from
// sources.yaml, the SSRF guard at dial time and the proxy from the
// environment (HTTPS_PROXY, NO_PROXY). It routes by the request's host, so
// a redirect to blob storage gets blob storage's settings, not the
// registry's.
type Transports struct {
	sources *Sources
	guard   *Guard
	lookup  func(ctx context.Context, host string) ([]string, error)
	proxy   func(*http.Request) (*url.URL, error)
	tlsHook func(host string, c *tls.Config) error

	maxHosts int
	hosts    *otter.Cache[string, *http.Transport]
}

// TransportsOption configures Transports.
type TransportsOption func(*Transports)

// WithSources sets the insecure sources and certificate authorities.
func WithSources(s *Sources) TransportsOption { return func(t *Transports) { t.sources = s } }

// WithDialGuard refuses connections to addresses g denies.
func WithDialGuard(g *Guard) TransportsOption { return func(t *Transports) { t.guard = g } }

// WithLookup replaces DNS resolution of registry host names (not of IP
// literals). Tests use it to give loopback registries names that do not
// look like loopback, without touching /etc/hosts; the guard still checks
// every address it returns.
func WithLookup(f func(ctx context.Context, host string) ([]string, error)) TransportsOption {
	return func(t *Transports) { t.lookup = f }
}

// WithProxy replaces http.ProxyFromEnvironment as the function choosing a
// proxy for a request (nil: no proxy). net/http reads the environment only
// once per process, so tests use this to set a proxy.
func WithProxy(f func(*http.Request) (*url.URL, error)) TransportsOption {
	return func(t *Transports) { t.proxy = f }
}

// WithTLSHook lets hook adjust a host's TLS settings when its transport is
// built (hosts.toml's ca, client and skip_verify: mirrors.Resolver.ApplyTLS).
// An error fails that host's connections with it.
func WithTLSHook(hook func(host string, c *tls.Config) error) TransportsOption {
	return func(t *Transports) { t.tlsHook = hook }
}

// NewTransports returns Transports.
func NewTransports(opts ...TransportsOption) *Transports {
	t := &Transports{proxy: http.ProxyFromEnvironment, maxHosts: DefaultMaxHosts}
	for _, o := range opts {
		o(t)
	}
	t.hosts = otter.Must(&otter.Options[string, *http.Transport]{
		MaximumSize: t.maxHosts,
		OnDeletion: func(e otter.DeletionEvent[string, *http.Transport]) {
			e.Value.CloseIdleConnections()
		},
	})
	return t
}

// For is a WithBaseTransport function: every registry shares the router.
func (t *Transports) For(string) http.RoundTripper { return t }

// RoundTrip sends r over the transport of r's host.
func (t *Transports) RoundTrip(r *http.Request) (*http.Response, error) {
	return t.host(r.URL.Host).RoundTrip(r)
}

// CloseIdleConnections closes idle connections of every host.
func (t *Transports) CloseIdleConnections() {
	for h := range t.hosts.Values() {
		h.CloseIdleConnections()
	}
}

func (t *Transports) host(host string) *http.Transport {
	if h, ok := t.hosts.GetIfPresent(host); ok {
		return h
	}
	h, _ := t.hosts.SetIfAbsent(host, t.newTransport(host))
	return h
}

func (t *Transports) newTransport(host string) *http.Transport {
	h := http.DefaultTransport.(*http.Transport).Clone()
	h.Proxy = t.guardedProxy
	h.DialContext = t.dial
	h.MaxIdleConnsPerHost = 32
	h.TLSClientConfig = &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    t.sources.RootCAs(host),
		// insecure_sources: HTTPS without verification is tried before
		// plain HTTP, as in Kubewarden.
		InsecureSkipVerify: t.sources.Insecure(host), //nolint:gosec // operator's explicit choice
	}
	if t.tlsHook != nil {
		if err := t.tlsHook(host, h.TLSClientConfig); err != nil {
			h.DialContext = func(context.Context, string, string) (net.Conn, error) { return nil, err }
		}
	}
	return h
}

// guardedProxy is the transports' Proxy function. Through a proxy, the
// dial-time guard only sees the proxy's address, so when a proxy is to be
// used the target host is checked here first: an IP literal directly, a
// name after resolving it (through the lookup hook when set) with every
// address it resolves to checked. The proxy resolves the name again on its
// own; a name whose answer changes in between (DNS rebinding) is beyond
// what can be checked from here.
func (t *Transports) guardedProxy(r *http.Request) (*url.URL, error) {
	if t.proxy == nil {
		return nil, nil
	}
	u, err := t.proxy(r)
	if err != nil || u == nil || t.guard == nil {
		return u, err
	}
	if err := t.checkTarget(r.Context(), r.URL.Hostname()); err != nil {
		return nil, err
	}
	return u, nil
}

// checkTarget refuses host (a name or an IP literal, without port) when it
// is, or resolves to, an address the guard denies.
func (t *Transports) checkTarget(ctx context.Context, host string) error {
	if ip, err := netip.ParseAddr(host); err == nil {
		return t.guard.CheckAddr(ip.WithZone(""))
	}
	if ip, ok := numericIPv4(host); ok {
		return t.guard.CheckAddr(ip)
	}
	lookup := t.lookup
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	addrs, err := lookup(ctx, host)
	if err != nil {
		return &net.OpError{Op: "proxy", Net: "tcp", Err: &net.DNSError{Err: err.Error(), Name: host}}
	}
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return fmt.Errorf("%s resolved to %q, not an address: %w", host, a, ErrDenied)
		}
		if err := t.guard.CheckAddr(ip.WithZone("")); err != nil {
			return fmt.Errorf("%s (through the proxy): %w", host, err)
		}
	}
	return nil
}

// dial resolves (through the lookup hook when set) and dials with the guard
// as the dialer's Control, so the address checked is the address
// connected to.
func (t *Transports) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	if t.guard != nil {
		d.Control = t.guard.Control
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return d.DialContext(ctx, network, addr)
	}
	if ip, ok := numericIPv4(host); ok {
		// An address in a notation the C resolver accepts but Go's does
		// not: dialled, and judged by the guard, as what it means, never
		// sent to DNS.
		return d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
	}
	if t.lookup == nil || net.ParseIP(host) != nil {
		return d.DialContext(ctx, network, addr)
	}
	addrs, err := t.lookup(ctx, host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: err.Error(), Name: host}}
	}
	var firstErr error
	for _, a := range addrs {
		c, err := d.DialContext(ctx, network, net.JoinHostPort(a, port))
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = fmt.Errorf("dial %s: no addresses for %s", network, host)
	}
	return nil, firstErr
}

// numericIPv4 parses the IPv4 notations of inet_aton that are not
// dotted-quad decimal: one to four parts, each decimal, octal (leading 0)
// or hexadecimal (0x), the last filling the remaining bytes
// ("2130706433", "0x7f000001", "0177.0.0.1", "127.1"). Browsers and the
// C library resolve these as addresses; a name like that must never
// reach DNS, nor the dial, as anything but the address it means.
func numericIPv4(host string) (netip.Addr, bool) {
	if host == "" || strings.Trim(host, "0123456789abcdefABCDEFxX.") != "" {
		return netip.Addr{}, false
	}
	parts := strings.Split(host, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	vals := make([]uint64, len(parts))
	for i, p := range parts {
		base, digits := 10, p
		switch {
		case strings.HasPrefix(p, "0x") || strings.HasPrefix(p, "0X"):
			base, digits = 16, p[2:]
		case len(p) > 1 && p[0] == '0':
			base, digits = 8, p[1:]
		}
		v, err := strconv.ParseUint(digits, base, 32)
		if err != nil || digits == "" {
			return netip.Addr{}, false
		}
		vals[i] = v
	}
	var n uint64
	for i, v := range vals[:len(vals)-1] {
		if v > 0xff {
			return netip.Addr{}, false
		}
		n |= v << (24 - 8*uint(i))
	}
	last := vals[len(vals)-1]
	if last >= 1<<(8*uint(5-len(vals))) {
		return netip.Addr{}, false
	}
	n |= last
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true
}
