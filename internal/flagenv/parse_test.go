package flagenv_test

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/flagenv"
)

type choice struct{ v *string }

func (c choice) String() string {
	if c.v == nil {
		return ""
	}
	return *c.v
}
func (c choice) Set(s string) error {
	if s != "text" && s != "json" {
		return errors.New("want text or json")
	}
	*c.v = s
	return nil
}

func newSet() (*flag.FlagSet, *time.Duration, *int, *bool, *string) {
	fs := flag.NewFlagSet("tool", flag.ContinueOnError)
	d := fs.Duration("cache-ttl", time.Minute, "")
	n := fs.Int("concurrency", 1, "")
	b := fs.Bool("cold", false, "")
	o := new(string)
	fs.Var(choice{o}, "o", "output `FORMAT`")
	fs.Float64("refresh-ahead", 0.2, "")
	fs.Uint64("memory-cache-size", 1, "")
	return fs, d, n, b, o
}

// TestParseReportsEveryProblem: each bad flag is one *FlagError naming
// the flag as written and the form it wants; parsing goes on past it.
func TestParseReportsEveryProblem(t *testing.T) {
	cases := []struct {
		args []string
		want []string // one per error, in order
	}{
		{[]string{"--cache-ttl=abc"}, []string{`--cache-ttl: want a duration such as 30s, got "abc"`}},
		{[]string{"-cache-ttl", "abc"}, []string{`-cache-ttl: want a duration such as 30s, got "abc"`}},
		{[]string{"--bogus"}, []string{"--bogus: unknown flag"}},
		{[]string{"-bogus=1"}, []string{"-bogus: unknown flag"}},
		{[]string{"--concurrency", "many"}, []string{`--concurrency: want an integer, got "many"`}},
		{[]string{"--refresh-ahead", "most"}, []string{`--refresh-ahead: want a number such as 0.5, got "most"`}},
		{[]string{"--memory-cache-size", "-1"}, []string{`--memory-cache-size: want a whole number, 0 or more, got "-1"`}},
		{[]string{"--cold=maybe"}, []string{`--cold: want true or false, got "maybe"`}},
		{[]string{"-o", "xml"}, []string{`-o: want text or json (got "xml")`}},
		{[]string{"--cache-ttl"}, []string{"--cache-ttl: needs a value: want a duration such as 30s"}},
		{[]string{"---x"}, []string{"---x: bad flag syntax"}},
		{[]string{"--Concurrency", "2"}, []string{"--Concurrency: unknown flag (did you mean --concurrency?)"}},
		{[]string{"--bogus", "--cache-ttl=x", "img", "--concurrency=y"}, []string{"--bogus: unknown flag", `--cache-ttl: want a duration such as 30s, got "x"`, `--concurrency: want an integer, got "y"`}},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			fs, _, _, _, _ := newSet()
			_, err := flagenv.Parse(fs, tc.args)
			var got []string
			if err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			var fe *flagenv.FlagError
			if !errors.As(err, &fe) {
				t.Fatalf("%T is not a *FlagError", err)
			}
		})
	}
}

// TestParseInterleaves: arguments and flags in any order, -- ends the
// flags, a bool flag takes no value, and --help is flag.ErrHelp.
func TestParseInterleaves(t *testing.T) {
	fs, d, n, b, o := newSet()
	pos, err := flagenv.Parse(fs, []string{"a", "--cache-ttl", "2s", "--cold", "b", "-o=json", "--concurrency=3", "--", "--not-a-flag"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pos, []string{"a", "b", "--not-a-flag"}) || *d != 2*time.Second || *n != 3 || !*b || *o != "json" {
		t.Fatalf("positional %q, ttl %s, concurrency %d, cold %v, o %q", pos, *d, *n, *b, *o)
	}
	for _, h := range []string{"-h", "--help", "-help"} {
		fs, _, _, _, _ := newSet()
		if _, err := flagenv.Parse(fs, []string{"--bogus", h}); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("%s: %v, want flag.ErrHelp", h, err)
		}
	}
}

// TestApplyReportsEveryVariable: every bad variable is named, with the
// form its flag wants.
func TestApplyReportsEveryVariable(t *testing.T) {
	fs, _, _, _, _ := newSet()
	env := map[string]string{"TOOL_CACHE_TTL": "soon", "TOOL_CONCURRENCY": "many"}
	err := flagenv.Apply(fs, "TOOL_", nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	want := fmt.Sprint(`environment variable TOOL_CACHE_TTL: want a duration such as 30s, got "soon"`, "\n",
		`environment variable TOOL_CONCURRENCY: want an integer, got "many"`)
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}
