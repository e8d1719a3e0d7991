package demo_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestREADMEQuickStart runs the README's quick start as a reader would,
// so that it cannot drift: the first block (the offline demo) is run and
// must print a miss and a hit for each function; the worker block must
// name the worker's package; the Contributing section's two tiers,
// `make check` and `make test`, must be targets of the Makefile.
func TestREADMEQuickStart(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := shBlocks(section(t, string(readme), "Quick start"))
	if len(blocks) < 2 {
		t.Fatalf("quick start has %d sh blocks, want the demo and the worker", len(blocks))
	}

	demo := commands(blocks[0])
	if len(demo) != 1 || demo[0] != "make demo" {
		t.Fatalf("first quick start block %q: want `make demo`", demo)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", demo[0])
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", demo[0], err, out)
	}
	for _, fn := range []string{"manifest_digest", "oci_manifest ", "oci_manifest_config"} {
		if strings.Count(string(out), "\n"+fn) != 2 {
			t.Errorf("%s: want two answers for %s:\n%s", demo[0], strings.TrimSpace(fn), out)
		}
	}
	if !strings.Contains(string(out), " miss ") || !strings.Contains(string(out), " hit ") {
		t.Errorf("%s: want misses and hits:\n%s", demo[0], out)
	}

	if worker := commands(blocks[1]); len(worker) != 1 || worker[0] != "go run ./cmd/worker" {
		t.Fatalf("second quick start block %q: want `go run ./cmd/worker`", worker)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "worker", "main.go")); err != nil {
		t.Errorf("go run ./cmd/worker: %v", err)
	}

	var tiers []string
	for _, b := range shBlocks(section(t, string(readme), "Contributing")) {
		tiers = append(tiers, commands(b)...)
	}
	if len(tiers) != 2 || tiers[0] != "make check" || tiers[1] != "make test" {
		t.Fatalf("Contributing commands %q: want `make check` and `make test`", tiers)
	}
	for _, tier := range tiers {
		target := strings.TrimPrefix(tier, "make ")
		dry := exec.CommandContext(ctx, "make", "-n", target)
		dry.Dir = root
		if out, err := dry.CombinedOutput(); err != nil {
			t.Errorf("make -n %s: %v\n%s", target, err, out)
		}
	}
}

// section returns the text under the README's "## title" heading, up to
// the next one.
func section(t *testing.T, md, title string) string {
	t.Helper()
	_, s, ok := strings.Cut(md, "\n## "+title+"\n")
	if !ok {
		t.Fatalf("README has no %q section", title)
	}
	s, _, _ = strings.Cut(s, "\n## ")
	return s
}

// shBlocks returns the contents of the ```sh blocks of md.
func shBlocks(md string) []string {
	var blocks []string
	for {
		_, rest, ok := strings.Cut(md, "```sh\n")
		if !ok {
			return blocks
		}
		block, after, _ := strings.Cut(rest, "```")
		blocks = append(blocks, block)
		md = after
	}
}

// commands are a block's command lines, without comments.
func commands(block string) []string {
	var out []string
	for _, l := range strings.Split(block, "\n") {
		l, _, _ = strings.Cut(l, "#")
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
