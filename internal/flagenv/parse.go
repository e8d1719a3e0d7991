package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// FlagError is one bad flag or variable, named as the user wrote it:
// "--cache-ttl", "-o" or "REGCAP_CACHE_TTL".
type FlagError struct {
	Name    string // as written: with its dashes, or the variable
	Problem string // what is wrong, and the form wanted
}

func (e *FlagError) Error() string { return e.Name + ": " + e.Problem }

// Parse reads args into fs as the flag package does (-f, --flag, value
// or =value, -- ends the flags), but it goes on past a bad flag, so that
// every problem is reported at once, and each error names the flag as
// it was written and the form it wants. Arguments that are not flags
// are returned in order; flags may follow them (as in kubectl and
// crane). -h and --help return flag.ErrHelp alone.
func Parse(fs *flag.FlagSet, args []string) (positional []string, err error) {
	var errs []error
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		written, body := a, a[1:]
		if body[0] == '-' {
			body = body[1:]
		}
		name, value, hasValue := strings.Cut(body, "=")
		if hasValue {
			written = a[:len(a)-len(value)-1]
		}
		if name == "" || name[0] == '-' || name[0] == '=' {
			errs = append(errs, &FlagError{Name: written, Problem: "bad flag syntax"})
			continue
		}
		if name == "h" || name == "help" {
			if fs.Lookup(name) == nil {
				return nil, flag.ErrHelp
			}
		}
		f := fs.Lookup(name)
		if f == nil {
			errs = append(errs, &FlagError{Name: written, Problem: "unknown flag" + suggest(fs, name)})
			continue
		}
		if !hasValue {
			if isBool(f) {
				value = "true"
			} else if i+1 < len(args) {
				i++
				value = args[i]
			} else {
				errs = append(errs, &FlagError{Name: written, Problem: "needs a value: want " + Want(f)})
				continue
			}
		}
		if serr := set(fs, f, value); serr != nil {
			errs = append(errs, &FlagError{Name: written, Problem: problem(f, value, serr)})
		}
	}
	return positional, errors.Join(errs...)
}

// Want describes the value flag f takes, for error messages.
func Want(f *flag.Flag) string {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return "a " + valueName(f)
	}
	switch g.Get().(type) {
	case time.Duration:
		return "a duration such as 30s"
	case bool:
		return "true or false"
	case int, int64:
		return "an integer"
	case uint, uint64:
		return "a whole number, 0 or more"
	case float64:
		return "a number such as 0.5"
	}
	return "a " + valueName(f)
}

func valueName(f *flag.Flag) string {
	n, _ := flag.UnquoteUsage(f)
	if n == "" {
		n = "value"
	}
	return n
}

// problem says why value is not a value of f: the expected form for the
// flag package's own types (whose errors say "parse error"), the Set
// error itself for custom values, which say what they want.
func problem(f *flag.Flag, value string, err error) string {
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration, bool, int, int64, uint, uint64, float64:
			return fmt.Sprintf("want %s, got %q", Want(f), value)
		}
	}
	return fmt.Sprintf("%v (got %q)", err, value)
}

// suggest names a flag close to an unknown one: one with the same
// name but for case or dashes, or one it is a prefix of.
func suggest(fs *flag.FlagSet, name string) string {
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "_", "-") }
	var best string
	fs.VisitAll(func(f *flag.Flag) {
		if best == "" && len(name) > 2 && (norm(name) == f.Name || strings.HasPrefix(f.Name, norm(name))) {
			best = f.Name
		}
	})
	if best == "" {
		return ""
	}
	return " (did you mean --" + best + "?)"
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// set sets f to value, and leaves it as it was when value is bad: the
// flag package zeroes a duration or a number it cannot parse, which
// would make one bad value look like two problems.
func set(fs *flag.FlagSet, f *flag.Flag, value string) error {
	old := f.Value.String()
	err := fs.Set(f.Name, value)
	if err != nil {
		_ = f.Value.Set(old)
	}
	return err
}
