package worker

import (
	"io"
	"net/http"

	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/registry"
)

// Access is the registry access New builds, opened up for the tests.
type Access struct {
	Keychain *registry.DockerConfig
	Sources  *registry.Sources
	Guard    *registry.Guard
	// Puller is the registry client New builds from them.
	Puller *registry.Puller
}

// AccessFrom parses args as cmd/worker does (flags, then the environment)
// and builds the registry access from them.
func AccessFrom(args []string, log *zap.Logger) (*Access, error) {
	f, err := ParseFlags(args, io.Discard)
	if err != nil {
		return nil, err
	}
	a, err := newAccess(&f.Config, log)
	if err != nil {
		return nil, err
	}
	same := func(f func(string) http.RoundTripper) func(string) http.RoundTripper { return f }
	return &Access{Keychain: a.keychain, Sources: a.sources, Guard: a.guard, Puller: a.puller(&f.Config, same, nil)}, nil
}
