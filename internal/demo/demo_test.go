package demo_test

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/regcap/regcap/internal/demo"
)

// TestDemo runs the demo as `make demo` does, offline on loopback, and
// checks what it prints: each function asked twice, a miss then a hit,
// with the same answer.
func TestDemo(t *testing.T) {
	var out strings.Builder
	if err := demo.Run(context.Background(), &out, zaptest.NewLogger(t), false); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var answers []string
	for _, l := range lines {
		if strings.HasPrefix(l, "manifest_digest") || strings.HasPrefix(l, "oci_manifest") {
			answers = append(answers, l)
		}
	}
	if len(answers) != 6 {
		t.Fatalf("want 6 answer lines, got:\n%s", out.String())
	}
	field := regexp.MustCompile(`^(\S+)\s+(\S+)\s+\S+\s+(.*)$`)
	for i := 0; i < 6; i += 2 {
		first, second := field.FindStringSubmatch(answers[i]), field.FindStringSubmatch(answers[i+1])
		if first == nil || second == nil || first[1] != second[1] || first[2] != "miss" || second[2] != "hit" || first[3] != second[3] {
			t.Errorf("want a miss then a hit with the same answer:\n%s\n%s", answers[i], answers[i+1])
		}
	}
	for _, want := range []string{`{"digest":"sha256:`, "application/vnd.oci.image.index.v1+json", "config for linux/arm64"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
