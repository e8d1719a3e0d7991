package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// completion prints a completion script for a shell: the commands, and
// each command's flags, read from the commands themselves so that the
// script never lags behind them.
func completion(env *cmdEnv, args []string) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(env.stdout, completionUsage)
		return exitOK
	}
	if len(args) != 1 {
		return env.usageError("requester completion", fmt.Errorf("want one SHELL: bash, zsh or fish"))
	}
	cmds := completionWords()
	switch args[0] {
	case "bash":
		writeBash(env.stdout, cmds)
	case "zsh":
		writeZsh(env.stdout, cmds)
	case "fish":
		writeFish(env.stdout, cmds)
	default:
		return env.usageError("requester completion", fmt.Errorf("unknown shell %q: want bash, zsh or fish", args[0]))
	}
	return exitOK
}

const completionUsage = `Usage: requester completion SHELL

Prints a completion script for bash, zsh or fish.

Examples:
  source <(requester completion bash)                  # bash, this shell
  requester completion bash > /etc/bash_completion.d/requester
  requester completion zsh > "${fpath[1]}/_requester"  # zsh
  requester completion fish > ~/.config/fish/completions/requester.fish
`

// cmdWords is one command's name, summary line and flags.
type cmdWords struct {
	name, summary string
	flags         []flagWord
}

type flagWord struct {
	name, usage string
	takesValue  bool
}

func completionWords() []cmdWords {
	summaries := map[string]string{}
	for _, line := range strings.Split(usage, "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "   ") {
			if _, err := fmt.Sscan(f[0], new(int)); err == nil {
				continue // an exit code
			}
			summaries[f[0]] = strings.TrimSpace(strings.Join(f[1:], " "))
		}
	}
	var out []cmdWords
	for name, c := range commands() {
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		var conn connFlags
		conn.register(fs)
		if c.flags != nil {
			c.flags(fs)
		}
		cw := cmdWords{name: name, summary: summaries[name]}
		fs.VisitAll(func(f *flag.Flag) {
			_, usage := flag.UnquoteUsage(f)
			cw.flags = append(cw.flags, flagWord{name: f.Name, usage: firstLine(usage), takesValue: !isBoolFlag(f)})
		})
		out = append(out, cw)
	}
	out = append(out, cmdWords{name: "completion", summary: "print a completion script for bash, zsh or fish"},
		cmdWords{name: "version", summary: "print the version"}, cmdWords{name: "help", summary: "show help for a command"})
	slices.SortFunc(out, func(a, b cmdWords) int { return strings.Compare(a.name, b.name) })
	return out
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 70 {
		s = s[:67] + "..."
	}
	return s
}

func dash(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

func writeBash(w io.Writer, cmds []cmdWords) {
	var names []string
	for _, c := range cmds {
		names = append(names, c.name)
	}
	fmt.Fprintf(w, `# bash completion for requester
_requester() {
    local cur prev cmd
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=( $(compgen -W "%s" -- "$cur") )
        return
    fi
    cmd="${COMP_WORDS[1]}"
    case "$prev" in
        -o|--output) COMPREPLY=( $(compgen -W "text json" -- "$cur") ); return ;;
        -f|--from-k8s-yaml|--creds|--nkey|--tlsca|--tlscert|--tlskey|--request-path|--settings-path) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;
    esac
    case "$cmd" in
        completion) COMPREPLY=( $(compgen -W "bash zsh fish" -- "$cur") ); return ;;
`, strings.Join(names, " "))
	for _, c := range cmds {
		if len(c.flags) == 0 {
			continue
		}
		var fl []string
		for _, f := range c.flags {
			fl = append(fl, dash(f.name))
		}
		fmt.Fprintf(w, "        %s) COMPREPLY=( $(compgen -W \"%s\" -- \"$cur\") ) ;;\n", c.name, strings.Join(fl, " "))
	}
	fmt.Fprint(w, `    esac
    if [[ "$cmd" == run && "$cur" != -* ]]; then
        COMPREPLY+=( $(compgen -f -- "$cur") )
    fi
}
complete -o default -F _requester requester
`)
}

func writeZsh(w io.Writer, cmds []cmdWords) {
	fmt.Fprint(w, "#compdef requester\n\n_requester() {\n  local -a commands\n  commands=(\n")
	for _, c := range cmds {
		fmt.Fprintf(w, "    %s\n", zshQuote(c.name+":"+c.summary))
	}
	fmt.Fprint(w, "  )\n  if (( CURRENT == 2 )); then\n    _describe 'command' commands\n    return\n  fi\n  case $words[2] in\n")
	fmt.Fprint(w, "    completion) _values 'shell' bash zsh fish ;;\n")
	for _, c := range cmds {
		if len(c.flags) == 0 {
			continue
		}
		fmt.Fprintf(w, "    %s)\n      _arguments \\\n", c.name)
		for _, f := range c.flags {
			spec := dash(f.name) + "[" + zshEscape(f.usage) + "]"
			if f.takesValue {
				spec += ":value:"
				if f.name == "o" || f.name == "output" {
					spec += "(text json)"
				} else {
					spec += "_files"
				}
			}
			fmt.Fprintf(w, "        %s \\\n", zshQuote(spec))
		}
		fmt.Fprint(w, "        '*:image:_files' ;;\n")
	}
	fmt.Fprint(w, "  esac\n}\n\ncompdef _requester requester\n")
}

func writeFish(w io.Writer, cmds []cmdWords) {
	fmt.Fprintln(w, "# fish completion for requester")
	fmt.Fprintln(w, "complete -c requester -f")
	for _, c := range cmds {
		fmt.Fprintf(w, "complete -c requester -n '__fish_use_subcommand' -a %s -d %s\n", c.name, fishQuote(c.summary))
	}
	fmt.Fprintln(w, "complete -c requester -n '__fish_seen_subcommand_from completion' -a 'bash zsh fish'")
	for _, c := range cmds {
		for _, f := range c.flags {
			opt := "-l " + f.name
			if len(f.name) == 1 {
				opt = "-s " + f.name
			}
			extra := ""
			if f.takesValue {
				extra = " -r"
				if f.name == "o" || f.name == "output" {
					extra += " -a 'text json'"
				}
			}
			fmt.Fprintf(w, "complete -c requester -n '__fish_seen_subcommand_from %s' %s%s -d %s\n", c.name, opt, extra, fishQuote(f.usage))
		}
	}
}

// zshQuote single-quotes s for zsh.
func zshQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// zshEscape escapes what _arguments reads specially inside [...].
func zshEscape(s string) string {
	r := strings.NewReplacer("[", `\[`, "]", `\]`, ":", `\:`)
	return r.Replace(s)
}

// fishQuote single-quotes s for fish.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}
