package registry

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"strings"
	"syscall"
)

// ErrDenied is returned when the SSRF guard or the registry allow-list
// refuses a connection. Callers answer it with 403.
var ErrDenied = errors.New("refused by policy")

// DefaultDenyCIDRs returns the networks the worker never connects to
// unless told otherwise: link-local (where cloud metadata services live)
// and the AWS IPv6 metadata address. Each call returns a new slice, so
// that no caller can change the default for the others.
func DefaultDenyCIDRs() []string {
	return []string{"169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"}
}

// Guard decides which registries may be asked at all (allow-list, checked
// before any connection) and which addresses may be dialled (deny-list,
// checked at dial time on the resolved address, so a DNS name that
// resolves to a denied address is refused too).
type Guard struct {
	deny  []netip.Prefix
	allow []string // lower-cased globs; empty allows every registry
}

// NewGuard returns a Guard that denies the networks in denyCIDRs and, if
// allow is not empty, only lets registries matching one of its globs be
// asked. A pattern with a port ("registry.local:5000") matches that
// host:port only; one without ("ghcr.io", "*.example.com") matches the host
// on any port. "docker.io" and "index.docker.io" both mean Docker Hub.
func NewGuard(denyCIDRs, allow []string) (*Guard, error) {
	g := &Guard{}
	for _, c := range denyCIDRs {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			// A bare address means just that address.
			a, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return nil, fmt.Errorf("deny CIDR %q: %w", c, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		g.deny = append(g.deny, unmapPrefix(p.Masked()))
	}
	for _, a := range allow {
		a = strings.ToLower(strings.TrimSpace(a))
		if a == "" {
			continue
		}
		if _, err := path.Match(a, ""); err != nil {
			return nil, fmt.Errorf("allowed registry pattern %q: %w", a, err)
		}
		g.allow = append(g.allow, a)
	}
	return g, nil
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix (::ffff:127.0.0.5/128,
// ::ffff:10.0.0.0/104) into the IPv4 prefix it means. CheckAddr unmaps the
// addresses it checks, as the kernel connects ::ffff:a.b.c.d over IPv4, so
// a prefix left in its mapped form would never match anything. Wider IPv6
// prefixes (shorter than /96) are kept as they are: they are about IPv6.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// CheckRegistry returns an error wrapping ErrDenied when host (as in an
// image reference, host[:port]) is outside the allow-list.
func (g *Guard) CheckRegistry(host string) error {
	if g == nil || len(g.allow) == 0 {
		return nil
	}
	h := strings.ToLower(host)
	hostOnly := h
	if hh, _, err := net.SplitHostPort(h); err == nil {
		hostOnly = hh
	}
	candidates := []string{h}
	if hostOnly == "index.docker.io" {
		candidates = append(candidates, "docker.io")
	}
	for _, pat := range g.allow {
		_, _, perr := net.SplitHostPort(pat)
		hasPort := perr == nil
		for _, c := range candidates {
			subject := c
			if !hasPort {
				if hh, _, err := net.SplitHostPort(c); err == nil {
					subject = hh
				}
			}
			if ok, _ := path.Match(pat, subject); ok {
				return nil
			}
		}
	}
	return fmt.Errorf("registry %s is not in the allowed registries (--allow-registries): %w", host, ErrDenied)
}

// neverDialled are refused whatever --deny-cidrs says: addresses that
// mean "this host" or "everyone" rather than one registry. Linux connects
// 0.0.0.0 and :: to the local host, which walks around a deny list that
// names 127.0.0.0/8.
var neverDialled = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),          // "this network", 0.0.0.0 connects locally
	netip.MustParsePrefix("::/128"),             // the IPv6 unspecified address
	netip.MustParsePrefix("224.0.0.0/4"),        // IPv4 multicast
	netip.MustParsePrefix("ff00::/8"),           // IPv6 multicast
	netip.MustParsePrefix("255.255.255.255/32"), // limited broadcast
}

// CheckAddr returns an error wrapping ErrDenied when ip is in a denied
// network, or in one that is never dialled. IPv4-mapped IPv6 addresses
// are judged as the IPv4 address they connect to.
func (g *Guard) CheckAddr(ip netip.Addr) error {
	if g == nil {
		return nil
	}
	ip = ip.Unmap()
	for _, p := range neverDialled {
		if p.Contains(ip) {
			return fmt.Errorf("address %s is in %s, never dialled whatever --deny-cidrs says: %w", ip, p, ErrDenied)
		}
	}
	for _, p := range g.deny {
		if p.Contains(ip) {
			return fmt.Errorf("address %s is in denied network %s (--deny-cidrs): %w", ip, p, ErrDenied)
		}
	}
	return nil
}

// Control is a net.Dialer Control function: it runs after name resolution,
// on the address about to be dialled, and refuses denied ones before any
// packet is sent.
func (g *Guard) Control(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		// Control always sees a resolved address; anything else is
		// refused rather than dialled unchecked.
		return fmt.Errorf("dialling %s: unresolved address: %w", address, ErrDenied)
	}
	return g.CheckAddr(ip.WithZone(""))
}
