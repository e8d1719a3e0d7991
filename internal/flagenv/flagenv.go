// Package flagenv lets every flag of a FlagSet be set from the environment,
// for container deployments where flags are awkward.
package flagenv

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// Name is the variable for a flag: the override if one is given, else
// prefix + the flag name upper-cased with dashes as underscores
// ("cache-ttl" → "REGCAP_CACHE_TTL").
func Name(prefix string, f *flag.Flag, overrides map[string]string) string {
	if v, ok := overrides[f.Name]; ok {
		return v
	}
	return prefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
}

// Apply sets every flag not given on the command line from its variable,
// if set. Call it after fs.Parse. A bad value is an error naming the
// variable.
func Apply(fs *flag.FlagSet, prefix string, overrides map[string]string, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		env := Name(prefix, f, overrides)
		if v, ok := lookup(env); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("environment variable %s=%q: %w", env, v, serr)
			}
		}
	})
	return err
}

// Usage returns a usage function that lists every flag with its
// environment variable: single-letter flags as -f, others as --name.
func Usage(fs *flag.FlagSet, summary, prefix string, overrides map[string]string) func() {
	return func() {
		out := fs.Output()
		fmt.Fprintln(out, summary)
		fmt.Fprintln(out, "\nFlags (each also settable from the environment variable shown):")
		fs.VisitAll(func(f *flag.Flag) {
			name, usage := flag.UnquoteUsage(f)
			// Go's flag package takes one dash or two; single letters
			// read best as -f, words as --word.
			line := "  --" + f.Name
			if len(f.Name) == 1 {
				line = "  -" + f.Name
			}
			if name != "" {
				line += " " + name
			}
			fmt.Fprintln(out, line)
			fmt.Fprintf(out, "      %s\n", strings.ReplaceAll(usage, "\n", "\n      "))
			def := ""
			if f.DefValue != "" {
				def = " (default " + f.DefValue + ")"
			}
			fmt.Fprintf(out, "      env %s%s\n", Name(prefix, f, overrides), def)
		})
	}
}
