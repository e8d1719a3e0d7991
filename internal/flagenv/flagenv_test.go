package flagenv_test

import (
	"flag"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/flagenv"
)

// TestUsage: single-letter flags are listed as -f, others as --name, each
// with its environment variable and default.
func TestUsage(t *testing.T) {
	fs := flag.NewFlagSet("tool", flag.ContinueOnError)
	var out strings.Builder
	fs.SetOutput(&out)
	fs.String("f", "", "a `FILE` to read")
	fs.String("o", "text", "output format")
	fs.Duration("cache-ttl", 0, "how long to cache")
	fs.String("nats-url", "nats://127.0.0.1:4222", "server")
	flagenv.Usage(fs, "Usage: tool [flags]", "TOOL_", map[string]string{"nats-url": "NATS_URL"})()

	got := out.String()
	for _, want := range []string{
		"Usage: tool [flags]\n",
		"\n  -f FILE\n      a FILE to read\n      env TOOL_F\n",
		"\n  -o string\n      output format\n      env TOOL_O (default text)\n",
		"\n  --cache-ttl duration\n      how long to cache\n      env TOOL_CACHE_TTL (default 0s)\n",
		"\n  --nats-url string\n      server\n      env NATS_URL (default nats://127.0.0.1:4222)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("usage lacks %q:\n%s", want, got)
		}
	}
	for _, bad := range []string{"--f ", "--o "} {
		if strings.Contains(got, bad) {
			t.Errorf("usage lists %q:\n%s", bad, got)
		}
	}
}

func TestApply(t *testing.T) {
	fs := flag.NewFlagSet("tool", flag.ContinueOnError)
	a := fs.String("a", "", "")
	b := fs.Int("max-pending", 1, "")
	c := fs.String("nats-url", "", "")
	if err := fs.Parse([]string{"-a", "given"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"TOOL_A": "from env", "TOOL_MAX_PENDING": "7", "NATS_URL": "nats://x"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := flagenv.Apply(fs, "TOOL_", map[string]string{"nats-url": "NATS_URL"}, lookup); err != nil {
		t.Fatal(err)
	}
	if *a != "given" || *b != 7 || *c != "nats://x" {
		t.Fatalf("a %q, max-pending %d, nats-url %q: the command line wins, else the environment", *a, *b, *c)
	}
	env["TOOL_MAX_PENDING"] = "many"
	fs2 := flag.NewFlagSet("tool", flag.ContinueOnError)
	fs2.Int("max-pending", 1, "")
	if err := flagenv.Apply(fs2, "TOOL_", nil, lookup); err == nil || !strings.Contains(err.Error(), "TOOL_MAX_PENDING") {
		t.Fatalf("bad value: err %v, want one naming the variable", err)
	}
}

func TestVersionAsked(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"version"}, true},
		{[]string{"digest", "busybox", "--version"}, true},
		{[]string{"-version"}, true},
		{[]string{"--nats-url", "x", "--", "--version"}, false},
		{[]string{"digest", "version"}, false},
		{[]string{"--versions"}, false},
	} {
		if got := flagenv.VersionAsked(tc.args); got != tc.want {
			t.Errorf("VersionAsked(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}
