package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/prefetch"
)

func prefetchCommand() *command {
	var (
		file, k8s, functions, platform, progress string
		concurrency, retries                     int
		interval                                 time.Duration
	)
	return &command{
		summary: "[-f FILE|-] [--from-k8s-yaml FILE|-] [IMAGE...] [flags]\n\nWarms the fleet's cache for a list of images before an admission spike.\nReferences the fleet would refuse are reported as its 400, without being sent.",
		examples: "  requester prefetch busybox:1.36 ghcr.io/kubewarden/policy-server:v1.9.0\n" +
			"  requester prefetch -f images.txt --functions digest,config -o json\n" +
			"  kubectl get deploy,sts,ds,cronjob -A -o yaml | requester prefetch --from-k8s-yaml -",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&file, "f", "", "file of image references, one per line, # comments; - for stdin")
			fs.StringVar(&k8s, "from-k8s-yaml", "", "Kubernetes YAML stream (e.g. kubectl get deploy -A -o yaml) whose "+joinAnd(prefetch.Kinds())+" images to prefetch, also inside Lists; - for stdin")
			fs.StringVar(&functions, "functions", "digest,manifest,config", "functions to call for each image, comma-separated")
			fs.StringVar(&platform, "platform", "", "os/arch[/variant] that config resolves indexes to (default: the worker's)")
			fs.IntVar(&concurrency, "concurrency", 16, "requests in flight at once")
			fs.IntVar(&retries, "retries", 3, "retries of a request that got 503, 429, no responders or a timeout")
			fs.StringVar(&progress, "progress", "auto", "progress on stderr: auto (a bar on a terminal, lines otherwise), bar, lines or none")
			fs.DurationVar(&interval, "progress-interval", 5*time.Second, "how often a progress line is printed when not on a terminal (positive)")
		},
		run: func(ctx context.Context, env *cmdEnv, args []string) int {
			switch progress {
			case "auto", "bar", "lines", "none":
			default:
				return env.usageError("requester prefetch", fmt.Errorf("--progress: want auto, bar, lines or none, got %q", progress))
			}
			if interval <= 0 {
				return env.usageError("requester prefetch", fmt.Errorf("--progress-interval: want a positive duration such as 5s, got %s", interval))
			}
			if concurrency < 1 {
				return env.usageError("requester prefetch", fmt.Errorf("--concurrency: want at least 1, got %d", concurrency))
			}
			fns, err := parseFunctions(functions)
			if err != nil {
				return env.usageError("requester prefetch", err)
			}
			images, err := prefetchInput(env.stdin, file, k8s, args)
			if err != nil {
				return env.usageError("requester prefetch", err)
			}
			if len(images) == 0 {
				return env.usageError("requester prefetch", errors.New("no images: give -f, --from-k8s-yaml or IMAGE arguments"))
			}
			nc, err := env.connect()
			if err != nil {
				return env.unreachable("requester", err)
			}
			defer nc.Close()

			total := len(images) * len(fns)
			var pg prefetch.Progress
			switch progress {
			case "auto":
				if f, ok := env.stderr.(*os.File); ok && isTerminal(f) {
					pg = prefetch.NewBar(env.stderr, total)
				} else {
					pg = prefetch.NewLines(env.stderr, total, interval)
				}
			case "bar":
				pg = prefetch.NewBar(env.stderr, total)
			case "lines":
				pg = prefetch.NewLines(env.stderr, total, interval)
			}
			opts := prefetch.Options{Functions: fns, Platform: platform, Concurrency: concurrency, Retries: retries,
				// A reference the fleet would refuse fails here, unsent,
				// with the 400 the fleet would answer.
				Check: func(image string, fn contract.Function) error { return checkReference(fn, image, platform) }}
			if pg != nil {
				opts.OnResult = pg.Add
			}
			rep := prefetch.Run(ctx, env.client(nc), images, opts)
			if pg != nil {
				pg.Stop()
			}

			if env.conn.output == "json" {
				enc := json.NewEncoder(env.stdout)
				enc.SetIndent("", "  ")
				_ = enc.Encode(rep)
			} else {
				prefetch.WriteText(env.stdout, rep, 50)
			}
			env.reportRetries("prefetch")
			switch {
			case !rep.Interrupted && rep.Unreachable():
				fmt.Fprintf(env.stderr, "requester prefetch: no worker answered on %s: is the fleet running?\n", env.conn.url)
				return exitUnreachable
			case rep.Failed > 0 || rep.Interrupted:
				return exitFailed
			}
			return exitOK
		},
	}
}

// joinAnd lists words as "a, b and c".
func joinAnd(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " and " + words[len(words)-1]
}

// parseFunctions reads "digest,manifest,config" (or the waPC operation
// names) into functions, in the order given, without repeats.
func parseFunctions(s string) ([]contract.Function, error) {
	var out []contract.Function
	seen := map[contract.Function]bool{}
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		fn, err := parseFunction(p)
		if err != nil {
			return nil, err
		}
		if !seen[fn] {
			seen[fn] = true
			out = append(out, fn)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("--functions: none given")
	}
	return out, nil
}

func parseFunction(s string) (contract.Function, error) {
	switch strings.TrimPrefix(s, "v1/") {
	case "digest", "manifest_digest":
		return contract.ManifestDigest, nil
	case "manifest", "oci_manifest":
		return contract.OCIManifest, nil
	case "config", "oci_manifest_config":
		return contract.OCIManifestConfig, nil
	}
	return "", fmt.Errorf("unknown function %q: want digest, manifest or config", s)
}

// prefetchInput gathers references from the list file, the Kubernetes
// YAML and the arguments, and drops duplicates.
func prefetchInput(stdin io.Reader, file, k8s string, args []string) ([]string, error) {
	if file == "-" && k8s == "-" {
		return nil, errors.New("-f and --from-k8s-yaml cannot both read stdin")
	}
	var refs []string
	if file != "" {
		got, err := readFrom(stdin, file, prefetch.ReadList)
		if err != nil {
			return nil, err
		}
		refs = append(refs, got...)
	}
	if k8s != "" {
		got, err := readFrom(stdin, k8s, prefetch.FromK8sYAML)
		if err != nil {
			return nil, err
		}
		refs = append(refs, got...)
	}
	refs = append(refs, args...)
	return prefetch.Unique(refs), nil
}

func readFrom(stdin io.Reader, path string, read func(io.Reader) ([]string, error)) ([]string, error) {
	if path == "-" {
		return read(stdin)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	refs, err := read(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return refs, nil
}
