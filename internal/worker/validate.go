package worker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/regcap/regcap/internal/mirrors"
	"github.com/regcap/regcap/internal/rediscache"
	"github.com/regcap/regcap/internal/registry"
)

// FieldError is one problem with one setting, named by its flag.
type FieldError struct {
	Flag    string // as on the command line: "--tls-cert"
	Problem string // what is wrong, and what is wanted
	Err     error  // the underlying error, if any
}

func (e *FieldError) Error() string { return e.Flag + ": " + e.Problem }

func (e *FieldError) Unwrap() error { return e.Err }

// Problems lists the *FieldErrors in err (as Validate returns them
// joined), nil when there are none.
func Problems(err error) []*FieldError {
	var out []*FieldError
	var walk func(error)
	walk = func(err error) {
		var fe *FieldError
		switch e := err.(type) {
		case nil:
		case interface{ Unwrap() []error }:
			for _, x := range e.Unwrap() {
				walk(x)
			}
		default:
			if errors.As(err, &fe) {
				out = append(out, fe)
			}
		}
	}
	walk(err)
	return out
}

// problems collects FieldErrors.
type problems []error

func (p *problems) add(flag, format string, args ...any) {
	*p = append(*p, &FieldError{Flag: flag, Problem: oneLine(fmt.Sprintf(format, args...))})
}

func (p *problems) wrap(flag string, err error) {
	*p = append(*p, &FieldError{Flag: flag, Problem: oneLine(err.Error()), Err: err})
}

// oneLine keeps a problem on its line: a YAML error, for one, spans
// several.
func oneLine(s string) string {
	f := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := range f {
		f[i] = strings.TrimSpace(f[i])
	}
	return strings.ReplaceAll(strings.Join(f, "; "), ":; ", ": ")
}

// Validate checks every setting, file, URL and combination of c without
// opening a listener or a connection, and returns every problem found,
// joined, each a *FieldError naming its flag. Zero values are valid: they
// take the defaults (or turn a feature off). New calls it before starting
// anything.
func (c *Config) Validate() error {
	var p problems
	c.checkNumbers(&p)
	c.checkNATS(&p)
	c.checkRedis(&p)
	c.checkListeners(&p)
	c.checkHTTP(&p)
	c.checkRegistryAccess(&p)
	c.checkHostsFiles(&p)
	return errors.Join(p...)
}

// Validate checks the log settings, then the Config; see Config.Validate.
func (f *Flags) Validate() error {
	var p problems
	if _, err := zapcore.ParseLevel(f.LogLevel); err != nil {
		p.add("--log-level", "want debug, info, warn or error, got %q", f.LogLevel)
	}
	switch f.LogFormat {
	case "auto", "json", "console":
	default:
		p.add("--log-format", "want auto, json or console, got %q", f.LogFormat)
	}
	return errors.Join(append(p, f.Config.Validate())...)
}

func (c *Config) checkNumbers(p *problems) {
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"--fetch-timeout", c.FetchTimeout}, {"--cache-ttl", c.CacheTTL}, {"--immutable-ttl", c.ImmutableTTL},
		{"--stale-if-error", c.StaleIfError}, {"--negative-ttl", c.NegativeTTL}, {"--lock-wait", c.LockWait},
		{"--shutdown-timeout", c.ShutdownTimeout}, {"--http-timeout", c.HTTPTimeout},
		{"--http-read-header-timeout", c.HTTPReadHeaderTimeout}, {"--http-read-timeout", c.HTTPReadTimeout},
		{"--http-idle-timeout", c.HTTPIdleTimeout},
	} {
		if d.v < 0 {
			p.add(d.flag, "want a duration of 0 or more such as 30s, got %s", d.v)
		}
	}
	for _, n := range []struct {
		flag string
		v    int64
	}{
		{"--concurrency", int64(c.Concurrency)}, {"--concurrency-per-registry", int64(c.ConcurrencyPerRegistry)},
		{"--max-pending", int64(c.MaxPending)}, {"--http-max-keys", int64(c.HTTPMaxKeys)},
		{"--http-max-inflight", int64(c.HTTPMaxInFlight)}, {"--http-batch-concurrency", int64(c.HTTPBatchConcurrency)},
		{"--http-max-reply-bytes", int64(c.HTTPMaxReplyBytes)}, {"--http-max-header-bytes", int64(c.HTTPMaxHeaderBytes)},
		{"--http-max-conns", int64(c.HTTPMaxConns)}, {"--max-manifest-size", c.ManifestLimit}, {"--max-config-size", c.BlobLimit},
	} {
		if n.v < 0 {
			p.add(n.flag, "want 0 or more (0: the default), got %d", n.v)
		}
	}
	if c.Concurrency > 0 && c.ConcurrencyPerRegistry > c.Concurrency {
		p.add("--concurrency-per-registry", "%d is more than --concurrency %d: want at most that", c.ConcurrencyPerRegistry, c.Concurrency)
	}
	if c.RefreshAhead < 0 || c.RefreshAhead >= 1 || c.RefreshAhead != c.RefreshAhead {
		p.add("--refresh-ahead", "want a fraction from 0 (off) to below 1, such as 0.2, got %g", c.RefreshAhead)
	}
	if c.TTLJitter < 0 || c.TTLJitter > 0.5 || c.TTLJitter != c.TTLJitter {
		p.add("--ttl-jitter", "want a fraction from 0 (off) to 0.5, such as 0.1, got %g", c.TTLJitter)
	}
}

func (c *Config) checkNATS(p *problems) {
	if c.NATSURL != "" {
		for _, u := range strings.Split(c.NATSURL, ",") {
			if err := checkNATSURL(strings.TrimSpace(u)); err != nil {
				p.add("--nats-url", "%q: %v", redactURL(strings.TrimSpace(u)), err)
			}
		}
	}
	if c.SubjectPrefix != "" {
		for _, tok := range strings.Split(c.SubjectPrefix, ".") {
			if tok == "" || strings.ContainsAny(tok, " \t\r\n*>") {
				p.add("--subject-prefix", "%q: want dot-separated NATS subject tokens without spaces, * or > (such as kubewarden)", c.SubjectPrefix)
				break
			}
		}
	}
	if strings.ContainsAny(c.QueueGroup, " \t\r\n*>") {
		p.add("--queue-group", "%q: want a name without spaces, * or >", c.QueueGroup)
	}
}

// checkNATSURL checks one server URL as nats.go reads it: a bare
// host:port is nats://host:port.
func checkNATSURL(s string) error {
	if s == "" {
		return errors.New("empty server URL in the list")
	}
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("want nats://host:port (or tls://, ws://, wss://)")
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return fmt.Errorf("scheme %q: want nats://, tls://, ws:// or wss://", u.Scheme)
	}
	if u.Hostname() == "" {
		return errors.New("no host: want nats://host:port")
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q: want a number from 1 to 65535", port)
		}
	}
	return nil
}

func (c *Config) checkRedis(p *problems) {
	switch c.RedisMode {
	case rediscache.ModeAuto, rediscache.ModeSingle, rediscache.ModeSentinel, rediscache.ModeCluster:
	default:
		p.add("--redis-mode", "want single, sentinel or cluster (or empty: told from --redis-url), got %q", c.RedisMode)
		return
	}
	if c.RedisURL == "" {
		if c.RedisMode != "" {
			p.add("--redis-mode", "%s is set but --redis-url is empty", c.RedisMode)
		}
		return
	}
	// Builds a client without dialling: go-redis connects on first use.
	rdb, err := rediscache.NewClient(c.RedisURL, c.RedisMode)
	if err != nil {
		p.add("--redis-url", "%q: want redis://[user:password@]host:port[/db] or rediss://…: %v", redactURL(c.RedisURL), err)
		return
	}
	_ = rdb.Close()
}

// checkListeners checks the listen addresses, and that no two of them
// are the same.
func (c *Config) checkListeners(p *problems) {
	type addr struct{ flag, v string }
	var addrs []addr
	if c.NATSURL == "" && c.EmbeddedNATSAddr != "" {
		addrs = append(addrs, addr{"--embedded-nats-addr", c.EmbeddedNATSAddr})
	}
	if c.MetricsAddr != "" {
		addrs = append(addrs, addr{"--metrics-addr", c.MetricsAddr})
	}
	if c.HTTPAddr != "" {
		addrs = append(addrs, addr{"--http-addr", c.HTTPAddr})
	}
	type bound struct{ flag, host, port string }
	var taken []bound
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a.v)
		if err != nil {
			p.add(a.flag, "%q: want host:port or :port, such as :9090", a.v)
			continue
		}
		n, err := strconv.Atoi(port)
		if err != nil || n < -1 || n > 65535 || (n == -1 && a.flag != "--embedded-nats-addr") {
			p.add(a.flag, "%q: port %q is not a number from 0 to 65535", a.v, port)
			continue
		}
		if n <= 0 {
			continue // any free port: never a clash
		}
		for _, b := range taken {
			if b.port == port && (b.host == host || anyHost(b.host) || anyHost(host)) {
				p.add(a.flag, "%s is also %s's address: give each listener its own port", a.v, b.flag)
				break
			}
		}
		taken = append(taken, bound{a.flag, host, port})
	}
}

// anyHost reports whether a listen address's host means every address.
func anyHost(h string) bool {
	ip, err := netip.ParseAddr(h)
	return h == "" || (err == nil && ip.IsUnspecified())
}

// checkHTTP checks the HTTP front's combination of flags and its files.
func (c *Config) checkHTTP(p *problems) {
	tlsGiven := c.TLSCert != "" || c.TLSKey != ""
	if c.HTTPAddr == "" {
		for _, f := range []struct{ flag, v string }{{"--tls-cert", c.TLSCert}, {"--tls-key", c.TLSKey}, {"--client-ca", c.ClientCA}} {
			if f.v != "" {
				p.add(f.flag, "set, but --http-addr is empty so no HTTP API is served: set --http-addr or drop %s", f.flag)
			}
		}
		if c.HTTPPlain {
			p.add("--http-plain", "set, but --http-addr is empty: set --http-addr (a loopback address) or drop --http-plain")
		}
		return
	}
	switch {
	case c.HTTPPlain && tlsGiven:
		p.add("--http-plain", "and --tls-cert/--tls-key both given: choose one")
	case c.HTTPPlain:
		host, _, err := net.SplitHostPort(c.HTTPAddr)
		if ip, perr := netip.ParseAddr(host); err == nil && (perr != nil || !ip.IsLoopback()) {
			p.add("--http-plain", "serves plain HTTP on a loopback --http-addr only (such as 127.0.0.1:8443), not %s: give --tls-cert and --tls-key instead", c.HTTPAddr)
		}
		if c.ClientCA != "" {
			p.add("--client-ca", "client certificates need TLS, and --http-plain turns it off: give --tls-cert and --tls-key instead of --http-plain")
		}
	case c.TLSCert == "" && c.TLSKey == "":
		p.add("--http-addr", "needs --tls-cert and --tls-key (or --http-plain on a loopback address)")
	case c.TLSKey == "":
		p.add("--tls-key", "missing: --tls-cert needs the private key that goes with it")
	case c.TLSCert == "":
		p.add("--tls-cert", "missing: --tls-key needs the certificate that goes with it")
	default:
		checkKeyPair(p, c.TLSCert, c.TLSKey)
	}
	if c.ClientCA != "" && !c.HTTPPlain {
		b, err := os.ReadFile(c.ClientCA)
		switch {
		case err != nil:
			p.wrap("--client-ca", err)
		case !x509.NewCertPool().AppendCertsFromPEM(b):
			p.add("--client-ca", "%s holds no PEM certificate", c.ClientCA)
		}
	}
}

// checkKeyPair reads the certificate and key once each, and says which
// of the two is wrong.
func checkKeyPair(p *problems, cert, key string) {
	cb, cerr := os.ReadFile(cert)
	if cerr != nil {
		p.wrap("--tls-cert", cerr)
	}
	kb, kerr := os.ReadFile(key)
	if kerr != nil {
		p.wrap("--tls-key", kerr)
	}
	if cerr != nil || kerr != nil {
		return
	}
	if _, err := tls.X509KeyPair(cb, kb); err != nil {
		p.add("--tls-cert", "%s and --tls-key %s are not a PEM certificate and its private key: %v", cert, key, err)
	}
}

// checkRegistryAccess reads the files and lists that registry access is
// built from, as newAccess does.
func (c *Config) checkRegistryAccess(p *problems) {
	if c.DockerConfig != "" {
		if _, err := registry.LoadDockerConfig(c.DockerConfig); err != nil {
			p.wrap("--docker-config", err)
		}
	}
	if c.Sources != "" {
		if _, err := registry.LoadSources(c.Sources); err != nil {
			p.wrap("--sources", err)
		}
	}
	if _, err := registry.NewGuard(c.DenyCIDRs, nil); err != nil {
		p.wrap("--deny-cidrs", err)
	}
	if _, err := registry.NewGuard(nil, c.AllowRegistries); err != nil {
		p.wrap("--allow-registries", err)
	}
}

// checkHostsFiles is where the mirror configuration (--hosts-dir,
// --registries-conf, issue 21) is checked once the worker has those
// flags: read and parsed here, each problem added under its flag.
func (c *Config) checkHostsFiles(p *problems) {
	if c.MirrorsOnly && c.HostsDir == "" && c.RegistriesConf == "" {
		p.add("--mirrors-only", "needs --hosts-dir or --registries-conf: with no mirror configured, no registry could be asked")
	}
	if c.HostsDir != "" {
		if err := mirrors.New(mirrors.WithHostsDir(c.HostsDir)).Check(); err != nil {
			p.wrap("--hosts-dir", err)
		}
	}
	if c.RegistriesConf != "" {
		if err := mirrors.New(mirrors.WithRegistriesConf(c.RegistriesConf)).Check(); err != nil {
			p.wrap("--registries-conf", err)
		}
	}
}

// PortsTakenError says which of the worker's listen addresses another
// process holds: all of them, so that a second worker on a host is told
// once, not once per port.
type PortsTakenError struct {
	Taken []string // "127.0.0.1:4222 (--embedded-nats-addr)"
}

func (e *PortsTakenError) Error() string {
	return fmt.Sprintf("%s already in use: another worker or server is running on this host; stop it, or set %s to free addresses",
		strings.Join(e.Taken, ", "), joinFlags(e.Taken))
}

func joinFlags(taken []string) string {
	var flags []string
	for _, t := range taken {
		if i := strings.LastIndex(t, "("); i >= 0 {
			flags = append(flags, strings.TrimSuffix(t[i+1:], ")"))
		}
	}
	return strings.Join(flags, " and ")
}

// checkPorts tries every address the worker will listen on, before any
// is opened for good.
func (c *Config) checkPorts() error {
	var taken []string
	var other error
	try := func(flag, addr string) {
		if addr == "" {
			return
		}
		switch err := portFree(addr); {
		case errors.Is(err, syscall.EADDRINUSE):
			taken = append(taken, addr+" ("+flag+")")
		case err != nil && other == nil:
			other = fmt.Errorf("%s %s: cannot listen there: %w", flag, addr, err)
		}
	}
	if c.NATSURL == "" {
		try("--embedded-nats-addr", c.EmbeddedNATSAddr)
	}
	try("--metrics-addr", c.MetricsAddr)
	try("--http-addr", c.HTTPAddr)
	if taken != nil {
		return &PortsTakenError{Taken: taken}
	}
	return other
}
