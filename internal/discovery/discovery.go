// Package discovery makes a worker visible to NATS service discovery
// (`nats micro ls`, `nats micro info regcap`, `nats micro stats regcap`)
// without handing its subscriptions to nats.go/micro: the worker keeps its
// own queue group, reply headers and in-callback memory hits, and this
// package answers the $SRV.PING, $SRV.INFO and $SRV.STATS control subjects
// with micro's wire types, filled from the worker's request outcomes.
package discovery

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/regcap/regcap/contract"
)

// Name is the service name regcap announces.
const Name = "regcap"

// Config describes the worker being announced.
type Config struct {
	Version     string // the build's stamp, announced as SemVer(Version)
	Prefix      string // subject prefix
	QueueGroup  string
	Description string
	Metadata    map[string]string
}

// Service answers the discovery subjects for one worker. It implements
// queue.Observer to count requests per endpoint.
type Service struct {
	nc      *nats.Conn
	id      string
	cfg     Config
	started time.Time

	mu    sync.Mutex
	stats map[contract.Function]*micro.EndpointStats
	subs  []*nats.Subscription
}

// Start subscribes to the control subjects.
func Start(nc *nats.Conn, cfg Config) (*Service, error) {
	b := make([]byte, 11)
	_, _ = rand.Read(b)
	s := &Service{nc: nc, id: strings.ToUpper(hex.EncodeToString(b)), cfg: cfg, started: time.Now().UTC(),
		stats: map[contract.Function]*micro.EndpointStats{}}
	s.cfg.Version = SemVer(cfg.Version)
	for _, fn := range contract.Functions() {
		s.stats[fn] = &micro.EndpointStats{Name: fn.Name(), Subject: fn.Subject(cfg.Prefix), QueueGroup: cfg.QueueGroup}
	}
	for _, verb := range []micro.Verb{micro.PingVerb, micro.InfoVerb, micro.StatsVerb} {
		for _, ids := range [][2]string{{"", ""}, {Name, ""}, {Name, s.id}} {
			subj, err := micro.ControlSubject(verb, ids[0], ids[1])
			if err != nil {
				s.Stop()
				return nil, err
			}
			sub, err := nc.Subscribe(subj, s.handle(verb))
			if err != nil {
				s.Stop()
				return nil, fmt.Errorf("subscribing to %s: %w", subj, err)
			}
			s.subs = append(s.subs, sub)
		}
	}
	return s, nil
}

// ID is this instance's service id.
func (s *Service) ID() string { return s.id }

// Stop unsubscribes from the control subjects.
func (s *Service) Stop() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe() // a closed connection has dropped them already
	}
	s.subs = nil
}

// Request counts a request for its endpoint (queue.Observer).
func (s *Service) Request(fn contract.Function, code int, _ contract.Outcome, elapsed time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.stats[fn]
	if e == nil {
		return
	}
	e.NumRequests++
	e.ProcessingTime += elapsed
	e.AverageProcessingTime = e.ProcessingTime / time.Duration(e.NumRequests)
	if code != 0 {
		e.NumErrors++
		e.LastError = strconv.Itoa(code)
	}
}

func (s *Service) identity() micro.ServiceIdentity {
	md := map[string]string{"queue_group": s.cfg.QueueGroup, "subject_prefix": s.cfg.Prefix}
	for k, v := range s.cfg.Metadata {
		md[k] = v
	}
	return micro.ServiceIdentity{Name: Name, ID: s.id, Version: s.cfg.Version, Metadata: md}
}

func (s *Service) handle(verb micro.Verb) nats.MsgHandler {
	return func(m *nats.Msg) {
		var v any
		switch verb {
		case micro.PingVerb:
			v = micro.Ping{ServiceIdentity: s.identity(), Type: micro.PingResponseType}
		case micro.InfoVerb:
			info := micro.Info{ServiceIdentity: s.identity(), Type: micro.InfoResponseType, Description: s.cfg.Description}
			for _, fn := range contract.Functions() {
				info.Endpoints = append(info.Endpoints, micro.EndpointInfo{
					Name: fn.Name(), Subject: fn.Subject(s.cfg.Prefix), QueueGroup: s.cfg.QueueGroup,
					Metadata: map[string]string{"operation": string(fn)},
				})
			}
			v = info
		case micro.StatsVerb:
			st := micro.Stats{ServiceIdentity: s.identity(), Type: micro.StatsResponseType, Started: s.started}
			s.mu.Lock()
			for _, fn := range contract.Functions() {
				e := *s.stats[fn]
				st.Endpoints = append(st.Endpoints, &e)
			}
			s.mu.Unlock()
			v = st
		}
		b, err := json.Marshal(v)
		if err != nil {
			return
		}
		_ = m.Respond(b)
	}
}

// semVer is semver.org 2.0's regular expression, the one nats.go/micro
// checks a service's version against (micro.AddService refuses any other,
// and `nats micro ls` drops an answer whose version does not match it).
var semVer = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

var (
	// describe is `git describe --tags --always --dirty` after a tag:
	// <tag>[-<commits since>-g<hash>][-dirty].
	describe = regexp.MustCompile(`^(.+?)(?:-(\d+)-g([0-9a-f]{4,64}))?(-dirty)?$`)
	// commit is the same without any tag: an abbreviated commit hash.
	commit = regexp.MustCompile(`^([0-9a-f]{4,64})(-dirty)?$`)
	// notIdentifier is what a SemVer identifier cannot hold (a dot
	// separates two).
	notIdentifier = regexp.MustCompile(`[^0-9A-Za-z-]+`)
)

// SemVer turns a build's version stamp (main.version, set by make build
// from `git describe --tags --always --dirty`, or by the Dockerfile's
// VERSION) into the semantic version NATS service discovery requires:
//
//	"", "dev"                  → 0.0.0-dev
//	v1.2.3, 1.2.3-rc.1         → 1.2.3, 1.2.3-rc.1 (a SemVer, with its v dropped)
//	v1.2.3-dirty               → 1.2.3+dirty
//	v1.2.3-4-g02d75a8-dirty    → 1.2.3+4.g02d75a8.dirty
//	02d75a8, 02d75a8-dirty     → 0.0.0-dev+02d75a8, 0.0.0-dev+02d75a8.dirty
//	anything else              → 0.0.0-dev+<the stamp, each run of other characters than
//	                             letters, digits and dashes made one dot>
//
// What git describe adds after a tag is build metadata: SemVer gives it
// no precedence, so a build after v1.2.3 is never ordered before v1.2.3,
// as a pre-release would be. A build from no tag is a pre-release of
// 0.0.0, "dev" as an unstamped build, with its commit as build metadata.
// The result of SemVer is its own image (SemVer(SemVer(s)) == SemVer(s)).
func SemVer(stamp string) string {
	stamp = strings.TrimSpace(stamp)
	v := stamp
	if len(v) > 1 && (v[0] == 'v' || v[0] == 'V') && v[1] >= '0' && v[1] <= '9' {
		v = v[1:]
	}
	if m := describe.FindStringSubmatch(v); m != nil && (m[2] != "" || m[4] != "") {
		if sm := semVer.FindStringSubmatch(m[1]); sm != nil && sm[5] == "" {
			var meta []string
			if m[2] != "" {
				meta = append(meta, m[2], "g"+m[3])
			}
			if m[4] != "" {
				meta = append(meta, "dirty")
			}
			return m[1] + "+" + strings.Join(meta, ".")
		}
	}
	if semVer.MatchString(v) {
		return v
	}
	if m := commit.FindStringSubmatch(stamp); m != nil {
		if m[2] != "" {
			return "0.0.0-dev+" + m[1] + ".dirty"
		}
		return "0.0.0-dev+" + m[1]
	}
	var ids []string
	for _, id := range strings.Split(notIdentifier.ReplaceAllString(stamp, "."), ".") {
		if id != "" {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 || stamp == "dev" {
		return "0.0.0-dev"
	}
	return "0.0.0-dev+" + strings.Join(ids, ".")
}
