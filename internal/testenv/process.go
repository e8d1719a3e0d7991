package testenv

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// BuildCommand compiles the module's cmd/<name> into a temporary folder
// and returns the binary's path, for tests that run it as a process.
func BuildCommand(t testing.TB, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", bin, "github.com/regcap/regcap/cmd/"+name)
	// No CGO_ENABLED=0: the same settings as go test, go run and make
	// build, so all of them share one build cache.
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building cmd/%s: %v\n%s", name, err, out)
	}
	return bin
}

// SyncBuffer is a bytes.Buffer that a process may write while the test
// reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Long marks t as one of the slow tests (node kills, binaries built and
// run, load): `go test -short` (make check) leaves it to `make test`,
// which runs everything.
func Long(t testing.TB, why string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("long (%s): make test runs it", why)
	}
}
