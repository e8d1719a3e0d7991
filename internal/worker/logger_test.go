package worker_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/worker"
)

// TestLogger: both formats trace the stack on errors only; a warning (the
// worker's start-up notes, a Redis outage) is one line.
func TestLogger(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			log, err := worker.NewLogger("info", format, &out)
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("not shown")
			log.Warn("a warning")
			if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "a warning") {
				t.Fatalf("a warning at info level: %q, want one line", out.String())
			}
			if format == "json" {
				var entry map[string]any
				if err := json.Unmarshal(out.Bytes(), &entry); err != nil || entry["level"] != "warn" || entry["msg"] != "a warning" {
					t.Fatalf("json entry %s: %v", out.Bytes(), err)
				}
			}
			out.Reset()
			log.Error("an error")
			if !strings.Contains(out.String(), "TestLogger") || !strings.Contains(out.String(), "testing.tRunner") {
				t.Fatalf("an error carries no stack trace: %q", out.String())
			}
		})
	}
	for _, bad := range [][2]string{{"loud", "json"}, {"info", "xml"}} {
		if _, err := worker.NewLogger(bad[0], bad[1], &bytes.Buffer{}); err == nil {
			t.Errorf("worker.NewLogger(%q, %q) accepted", bad[0], bad[1])
		}
	}
}
