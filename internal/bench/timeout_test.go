package bench

import (
	"testing"
	"time"
)

// TestEchoTimeout: the echo is bounded as the regcap requests are: by the
// configured timeout, else by client.New's default of 30s.
func TestEchoTimeout(t *testing.T) {
	if got := (&Echo{}).timeout(); got != 30*time.Second {
		t.Fatalf("default echo timeout %v, want 30s as the client's", got)
	}
	if got := (&Echo{Timeout: 2 * time.Second}).timeout(); got != 2*time.Second {
		t.Fatalf("echo timeout %v, want the configured 2s", got)
	}
}
