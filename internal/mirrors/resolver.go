package mirrors

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultCheckInterval is how often, at most, files are checked for change.
const DefaultCheckInterval = 2 * time.Second

// maxRegistries bounds the per-registry cache of hosts.toml lookups; the
// registry names come from requests.
const maxRegistries = 4096

// Request names what is asked for: a logical reference.
type Request struct {
	// Registry is the registry as in the reference (docker.io,
	// index.docker.io and registry-1.docker.io are one).
	Registry string
	// Repository is the repository path, e.g. library/busybox.
	Repository string
	// Tag or Digest: exactly one is set. A tag needs a host that may
	// resolve; a digest may come from pull-only hosts.
	Tag    string
	Digest string
}

// ByDigest reports whether the request is by digest.
func (q Request) ByDigest() bool { return q.Digest != "" }

func (q Request) String() string {
	s := Canonical(q.Registry) + "/" + q.Repository
	if q.Digest != "" {
		return s + "@" + q.Digest
	}
	if q.Tag != "" {
		return s + ":" + q.Tag
	}
	return s
}

// Resolver maps logical references to endpoints. It is safe for
// concurrent use; it starts no goroutine: files are checked for change on
// use, at most once per check interval.
type Resolver struct {
	hostsDir    string
	confPath    string
	mirrorsOnly bool
	interval    time.Duration
	now         func() time.Time
	onError     func(path string, err error)

	mu    sync.Mutex
	hosts map[string]*hostsState
	conf  *confState
	tls   map[string]hostTLS // by endpoint host, for ApplyTLS
}

// fileSig tells a file's versions apart: a ConfigMap update replaces the
// file (another inode), an edit changes its size or mtime. mtimes are
// coarse (a kernel tick), so the inode matters.
type fileSig struct {
	path string
	size int64
	mod  time.Time
	fi   os.FileInfo
}

func (a fileSig) same(b fileSig) bool {
	if a.path != b.path || a.size != b.size || !a.mod.Equal(b.mod) || (a.fi == nil) != (b.fi == nil) {
		return false
	}
	return a.fi == nil || os.SameFile(a.fi, b.fi)
}

type hostsState struct {
	checked time.Time
	sig     fileSig
	entries []hostEntry // nil: nothing configured for the registry
	err     error
}

type confState struct {
	checked time.Time
	sigs    []fileSig
	conf    registriesConf
	err     error
}

// Option configures a Resolver.
type Option func(*Resolver)

// WithHostsDir reads containerd hosts.toml folders under dir (containerd's
// config_path, e.g. /etc/containerd/certs.d).
func WithHostsDir(dir string) Option { return func(r *Resolver) { r.hostsDir = dir } }

// WithRegistriesConf reads a registries.conf v2 file and the *.conf files
// of the registries.conf.d folder beside it, in lexical order.
func WithRegistriesConf(path string) Option { return func(r *Resolver) { r.confPath = path } }

// WithMirrorsOnly never returns the registry itself as an endpoint: for
// air-gapped clusters, where only mirrors answer.
func WithMirrorsOnly(on bool) Option { return func(r *Resolver) { r.mirrorsOnly = on } }

// WithCheckInterval sets how often, at most, files are checked for change
// (default DefaultCheckInterval; 0 checks on every use).
func WithCheckInterval(d time.Duration) Option { return func(r *Resolver) { r.interval = d } }

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(r *Resolver) { r.now = now } }

// WithErrorHandler is told when a changed file cannot be used and its
// previous version is kept (e.g. to log it).
func WithErrorHandler(f func(path string, err error)) Option {
	return func(r *Resolver) { r.onError = f }
}

// New returns a Resolver. With neither a hosts directory nor a
// registries.conf, every registry is its own only endpoint.
func New(opts ...Option) *Resolver {
	r := &Resolver{interval: DefaultCheckInterval, now: time.Now, onError: func(string, error) {}, hosts: map[string]*hostsState{}, tls: map[string]hostTLS{}}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Check reads every configured file once, for validation at start-up:
// the registries.conf (and drop-ins) and every hosts.toml under the hosts
// directory.
func (r *Resolver) Check() error {
	if r.confPath != "" {
		r.mu.Lock()
		st := r.loadConf()
		r.mu.Unlock()
		if st.err != nil {
			return st.err
		}
	}
	if r.hostsDir != "" {
		fi, err := os.Stat(r.hostsDir)
		if err != nil {
			return &ConfigError{Path: r.hostsDir, Err: err}
		}
		if !fi.IsDir() {
			return &ConfigError{Path: r.hostsDir, Err: errors.New("not a directory")}
		}
		ents, err := os.ReadDir(r.hostsDir)
		if err != nil {
			return &ConfigError{Path: r.hostsDir, Err: err}
		}
		for _, e := range ents {
			if !e.IsDir() {
				continue
			}
			dir := filepath.Join(r.hostsDir, e.Name())
			b, err := readBounded(filepath.Join(dir, "hosts.toml"))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err == nil {
				_, err = parseHostsFile(dir, b)
			}
			if err != nil {
				return &ConfigError{Path: filepath.Join(dir, "hosts.toml"), Err: err}
			}
		}
	}
	return nil
}

// Endpoints returns the endpoints to try for q, in order. Errors: a
// *BlockedError (ErrBlocked), a *NoEndpointError (ErrNoEndpoint) or a
// *ConfigError (ErrConfig).
func (r *Resolver) Endpoints(q Request) ([]Endpoint, error) {
	reg := Canonical(q.Registry)
	var eps []Endpoint
	r.mu.Lock()
	decided := false
	if r.confPath != "" {
		st := r.loadConf()
		if st.err != nil {
			r.mu.Unlock()
			return nil, st.err
		}
		var err error
		eps, decided, err = st.conf.endpoints(q)
		if err != nil {
			r.mu.Unlock()
			return nil, err
		}
	}
	if !decided && r.hostsDir != "" {
		st := r.loadHosts(reg)
		if st.err != nil {
			r.mu.Unlock()
			return nil, st.err
		}
		if st.entries != nil {
			decided = true
			need := CapPull
			if !q.ByDigest() {
				need |= CapResolve
			}
			for _, h := range st.entries {
				if h.ep.Host == "" {
					// No server: the registry itself, with every
					// capability, as containerd fills it in.
					h.ep.Scheme, h.ep.Host, h.ep.Path, h.caps = "https", defaultHost(reg), "/v2", capAll
				}
				if h.caps&need != need {
					continue
				}
				e := h.ep
				e.Header = e.Header.Clone()
				e.Repository = q.Repository
				e.Source = st.sig.path
				e.Mirror = !sameHost(e.Host, reg)
				if e.Mirror {
					e.Namespace = reg
				}
				r.rememberTLS(e)
				eps = append(eps, e)
			}
			if len(eps) == 0 {
				r.mu.Unlock()
				return nil, &NoEndpointError{Reference: q.String(), Reason: fmt.Sprintf("no host in %s has the capabilities %s", st.sig.path, need)}
			}
		}
	}
	r.mu.Unlock()
	if !decided {
		eps = []Endpoint{{Scheme: "https", Host: defaultHost(reg), Path: "/v2", Repository: q.Repository}}
	}
	if r.mirrorsOnly {
		kept := eps[:0]
		for _, e := range eps {
			if e.Mirror {
				kept = append(kept, e)
			}
		}
		if len(kept) == 0 {
			return nil, &NoEndpointError{Reference: q.String(), Reason: "--mirrors-only is set and no mirror is configured for " + reg}
		}
		eps = kept
	}
	return eps, nil
}

func (c Capabilities) String() string {
	var s []string
	if c&CapPull != 0 {
		s = append(s, "pull")
	}
	if c&CapResolve != 0 {
		s = append(s, "resolve")
	}
	return strings.Join(s, "+")
}

// endpoints applies registries.conf to q. decided is false when no
// [[registry]] matches.
func (c registriesConf) endpoints(q Request) ([]Endpoint, bool, error) {
	reg := Canonical(q.Registry)
	ref := q.String()
	cr, n := c.find(ref)
	if cr == nil {
		return nil, false, nil
	}
	if cr.Blocked {
		return nil, true, &BlockedError{Reference: ref, Prefix: cr.Prefix, Source: cr.source}
	}
	type loc struct {
		location string
		insecure bool
	}
	var locs []loc
	for _, m := range cr.Mirrors {
		if cr.MirrorByDigestOnly && !q.ByDigest() {
			continue
		}
		switch m.PullFromMirror {
		case pullDigestOnly:
			if !q.ByDigest() {
				continue
			}
		case pullTagOnly:
			if q.ByDigest() {
				continue
			}
		}
		locs = append(locs, loc{m.Location, m.Insecure})
	}
	locs = append(locs, loc{cr.Location, cr.Insecure})
	eps := make([]Endpoint, 0, len(locs))
	for _, l := range locs {
		rewritten := ref
		if l.location != "" {
			rewritten = l.location + ref[n:]
		}
		host, repo, err := splitRef(rewritten)
		if err != nil {
			return nil, true, &ConfigError{Path: cr.source, Err: fmt.Errorf("[[registry]] %q rewrites %s to %q: %w", cr.Prefix, ref, rewritten, err)}
		}
		eps = append(eps, Endpoint{
			Scheme: "https", Host: defaultHost(Canonical(host)), Path: "/v2", Repository: repo,
			Insecure: l.insecure, Mirror: !sameHost(host, reg), Source: cr.source,
		})
	}
	return eps, true, nil
}

// splitRef splits host/repo[:tag][@digest] into host and repo.
func splitRef(s string) (host, repo string, err error) {
	if i := strings.IndexByte(s, '@'); i >= 0 {
		s = s[:i]
	}
	if i := strings.LastIndexByte(s, ':'); i > strings.LastIndexByte(s, '/') {
		s = s[:i]
	}
	host, repo, ok := strings.Cut(s, "/")
	if !ok || host == "" || repo == "" {
		return "", "", errors.New("not host/repository")
	}
	if Canonical(host) == hubName && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	return strings.ToLower(host), repo, nil
}

// loadConf returns the registries.conf state, re-read when its files
// changed. r.mu is held.
func (r *Resolver) loadConf() *confState {
	now := r.now()
	if r.conf != nil && now.Sub(r.conf.checked) < r.interval {
		return r.conf
	}
	paths, err := r.confFiles()
	var sigs []fileSig
	if err == nil {
		for _, p := range paths {
			fi, serr := os.Stat(p)
			if serr != nil {
				err = serr
				break
			}
			sigs = append(sigs, fileSig{path: p, size: fi.Size(), mod: fi.ModTime(), fi: fi})
		}
	}
	if err == nil && r.conf != nil && r.conf.err == nil && sameSigs(sigs, r.conf.sigs) {
		r.conf.checked = now
		return r.conf
	}
	var files [][]confRegistry
	if err == nil {
		for _, p := range paths {
			b, rerr := readBounded(p)
			var regs []confRegistry
			if rerr == nil {
				regs, rerr = parseRegistriesConf(p, b)
			}
			if rerr != nil {
				err = &ConfigError{Path: p, Err: rerr}
				break
			}
			files = append(files, regs)
		}
	} else {
		err = &ConfigError{Path: r.confPath, Err: err}
	}
	if err != nil {
		if r.conf != nil && r.conf.err == nil {
			// Keep the last good configuration; say why once per change.
			r.onError(r.confPath, err)
			r.conf.checked = now
			r.conf.sigs = sigs
			return r.conf
		}
		r.conf = &confState{checked: now, err: err}
		return r.conf
	}
	r.conf = &confState{checked: now, sigs: sigs, conf: merge(files)}
	return r.conf
}

// confFiles lists the registries.conf and its drop-ins, in load order.
func (r *Resolver) confFiles() ([]string, error) {
	paths := []string{r.confPath}
	dir := filepath.Join(filepath.Dir(r.confPath), "registries.conf.d")
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".conf") {
			names = append(names, e.Name())
		}
	}
	if len(names) > MaxDropIns {
		return nil, fmt.Errorf("%s: %d drop-ins, over the limit of %d", dir, len(names), MaxDropIns)
	}
	sort.Strings(names)
	for _, n := range names {
		paths = append(paths, filepath.Join(dir, n))
	}
	return paths, nil
}

func sameSigs(a, b []fileSig) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].same(b[i]) {
			return false
		}
	}
	return true
}

// loadHosts returns reg's hosts.toml state, re-read when it changed.
// r.mu is held.
func (r *Resolver) loadHosts(reg string) *hostsState {
	now := r.now()
	prev := r.hosts[reg]
	if prev != nil && now.Sub(prev.checked) < r.interval {
		return prev
	}
	st := r.readHosts(reg)
	st.checked = now
	if st.err != nil && prev != nil && prev.err == nil && prev.sig.path == st.sig.path {
		r.onError(st.sig.path, st.err)
		prev.checked, prev.sig = now, st.sig
		return prev
	}
	if prev != nil && st.err == nil && prev.err == nil && prev.sig.same(st.sig) {
		prev.checked = now
		return prev
	}
	if prev == nil && len(r.hosts) >= maxRegistries {
		clear(r.hosts)
	}
	r.hosts[reg] = st
	return st
}

// readHosts finds reg's folder and reads it: a hosts.toml, or, without
// one, the Docker-style certificate files of the folder.
func (r *Resolver) readHosts(reg string) *hostsState {
	for _, dir := range hostDirs(r.hostsDir, reg) {
		fi, err := os.Stat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return &hostsState{err: &ConfigError{Path: dir, Err: err}}
		}
		if !fi.IsDir() {
			continue
		}
		file := filepath.Join(dir, "hosts.toml")
		ffi, err := os.Stat(file)
		if errors.Is(err, fs.ErrNotExist) {
			// A folder without hosts.toml: certificates only, for the
			// registry itself, as containerd reads them.
			st := &hostsState{sig: fileSig{path: dir, mod: fi.ModTime(), fi: fi}}
			st.entries, st.err = certFiles(dir)
			return st
		}
		if err != nil {
			return &hostsState{err: &ConfigError{Path: file, Err: err}}
		}
		st := &hostsState{sig: fileSig{path: file, size: ffi.Size(), mod: ffi.ModTime(), fi: ffi}}
		b, err := readBounded(file)
		if err == nil {
			st.entries, err = parseHostsFile(dir, b)
		}
		if err != nil {
			st.entries, st.err = nil, &ConfigError{Path: file, Err: err}
		}
		return st
	}
	return &hostsState{}
}

// certFiles reads a folder of *.crt (CAs) and *.cert/*.key (client pairs)
// into one entry for the registry itself.
func certFiles(dir string) ([]hostEntry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, &ConfigError{Path: dir, Err: err}
	}
	e := hostEntry{caps: capAll}
	for _, f := range ents {
		if f.IsDir() {
			continue
		}
		n := f.Name()
		switch {
		case strings.HasSuffix(n, ".crt"):
			e.ep.CAFiles = append(e.ep.CAFiles, filepath.Join(dir, n))
		case strings.HasSuffix(n, ".cert"):
			pair := [2]string{filepath.Join(dir, n), ""}
			key := filepath.Join(dir, strings.TrimSuffix(n, ".cert")+".key")
			if _, err := os.Stat(key); err == nil {
				pair[1] = key
			}
			e.ep.ClientCerts = append(e.ep.ClientCerts, pair)
		}
	}
	return []hostEntry{e}, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFileSize {
		return nil, fmt.Errorf("over the %d-byte limit", MaxFileSize)
	}
	return b, nil
}
