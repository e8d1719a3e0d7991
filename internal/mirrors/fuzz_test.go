package mirrors

import (
	"strings"
	"testing"
)

func FuzzParseHostsFile(f *testing.F) {
	for _, s := range []string{
		"server = \"https://r\"\n[host.\"https://m\"]\ncapabilities = [\"pull\"]\nca = \"a\"\nclient = [[\"c\", \"k\"]]\n[host.\"https://m\".header]\nx = [\"1\"]\n",
		"[host.\"\"]\n", "[host]\n", "host = 1\n", "[host.\"a\".header]\n\"bad name\" = \"x\"\n", "server = \"http://[::1]:5000/p\"\noverride_path = true\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		hosts, err := parseHostsFile("/base", []byte(s))
		if err != nil {
			return
		}
		if len(hosts) == 0 || len(hosts) > MaxHosts+1 {
			t.Fatalf("%d hosts", len(hosts))
		}
		for _, h := range hosts[:len(hosts)-1] {
			if h.ep.Host == "" || (h.ep.Scheme != "http" && h.ep.Scheme != "https") {
				t.Fatalf("host entry without address or scheme: %+v", h.ep)
			}
			for _, vs := range h.ep.Header {
				for _, v := range vs {
					if strings.ContainsAny(v, "\r\n") {
						t.Fatalf("header value with a line break: %q", v)
					}
				}
			}
		}
	})
}

func FuzzParseRegistriesConf(f *testing.F) {
	for _, s := range []string{
		"[[registry]]\nprefix = \"a.com/x\"\nlocation = \"b.com/y\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"digest-only\"\n",
		"[[registry]]\nprefix = \"*.a.com\"\n", "[[registry]]\nlocation = \"docker.io\"\nblocked = true\n",
	} {
		f.Add(s, "a.com/x/app:1")
	}
	f.Fuzz(func(t *testing.T, s, ref string) {
		regs, err := parseRegistriesConf("f", []byte(s))
		if err != nil {
			return
		}
		c := merge([][]confRegistry{regs})
		for i := 1; i < len(c.regs); i++ {
			if c.regs[i-1].Prefix >= c.regs[i].Prefix {
				t.Fatalf("prefixes not unique and sorted: %q, %q", c.regs[i-1].Prefix, c.regs[i].Prefix)
			}
		}
		if r, n := c.find(ref); r != nil && (n < 0 || n > len(ref)) {
			t.Fatalf("match length %d for %q", n, ref)
		}
		host, repo, ok := strings.Cut(ref, "/")
		if !ok {
			return
		}
		eps, decided, err := c.endpoints(Request{Registry: host, Repository: repo, Tag: "1"})
		if err != nil || !decided {
			return
		}
		if len(eps) == 0 {
			t.Fatal("a match with no endpoint and no error")
		}
		for _, e := range eps {
			if e.Host == "" || e.Repository == "" {
				t.Fatalf("endpoint without host or repository: %+v", e)
			}
		}
	})
}
