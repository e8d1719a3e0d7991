// Package flagenv lets every flag of a FlagSet be set from the environment,
// for container deployments where flags are awkward.
package flagenv

import (
	"errors"
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
// if set. Call it after fs.Parse. Every bad value is reported, each a
// *FlagError naming its variable.
func Apply(fs *flag.FlagSet, prefix string, overrides map[string]string, lookup func(string) (string, bool)) error {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		env := Name(prefix, f, overrides)
		if v, ok := lookup(env); ok {
			if serr := set(fs, f, v); serr != nil {
				errs = append(errs, &FlagError{Name: "environment variable " + env, Problem: problem(f, v, serr)})
			}
		}
	})
	return errors.Join(errs...)
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

// VersionAsked reports whether a command line asks for the version:
// --version anywhere before a "--", or the version command first.
func VersionAsked(args []string) bool {
	if len(args) > 0 && args[0] == "version" {
		return true
	}
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--version", "-version":
			return true
		}
	}
	return false
}
