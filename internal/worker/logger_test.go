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

// TestLoggerAuto: --log-format auto writes JSON, with RFC 3339 times,
// to anything that is not a terminal (a pipe, a file, a container's
// log).
func TestLoggerAuto(t *testing.T) {
	var out bytes.Buffer
	log, err := worker.NewLogger("info", "auto", &out)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("started")
	var entry map[string]any
	if err := json.Unmarshal(out.Bytes(), &entry); err != nil {
		t.Fatalf("auto to a buffer: %s is not JSON: %v", out.Bytes(), err)
	}
	if ts, _ := entry["ts"].(string); !strings.Contains(ts, "T") {
		t.Fatalf("ts %v, want an RFC 3339 time", entry["ts"])
	}
	if _, err := worker.NewLogger("info", "yaml", &out); err == nil {
		t.Fatal("--log-format yaml accepted")
	}
}
