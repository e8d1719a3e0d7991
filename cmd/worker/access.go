package main

import (
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/registry"
)

// access is how the worker reaches registries: credentials, sources.yaml,
// the SSRF guard and the per-host transports built from them.
type access struct {
	keychain   *registry.DockerConfig
	sources    *registry.Sources
	guard      *registry.Guard
	transports *registry.Transports
}

// newAccess loads the files named by the flags; any problem with them is a
// start-up error, so that a typo never silently means anonymous pulls or
// unverified TLS.
func newAccess(cfg *config, log *zap.Logger) (*access, error) {
	kc, err := registry.LoadDockerConfig(cfg.dockerConfig, registry.WithReloadErrors(func(err error) {
		log.Warn("re-reading the docker config failed; keeping the previous credentials", zap.Error(err))
	}))
	if err != nil {
		return nil, fmt.Errorf("--docker-config: %w", err)
	}
	src, err := registry.LoadSources(cfg.sources)
	if err != nil {
		return nil, fmt.Errorf("--sources: %w", err)
	}
	guard, err := registry.NewGuard(splitList(cfg.denyCIDRs), splitList(cfg.allowRegs))
	if err != nil {
		return nil, fmt.Errorf("--deny-cidrs/--allow-registries: %w", err)
	}
	if p := kc.Path(); p != "" {
		if _, err := os.Stat(p); err != nil {
			log.Info("no docker config yet: registries are accessed anonymously until it appears", zap.String("path", p))
		} else {
			log.Info("registry credentials from the docker config, re-read when it changes", zap.String("path", p))
		}
	} else {
		log.Info("no docker config: registries are accessed anonymously")
	}
	if cfg.sources != "" {
		log.Info("registry sources loaded", zap.String("path", cfg.sources))
	}
	return &access{
		keychain:   kc,
		sources:    src,
		guard:      guard,
		transports: registry.NewTransports(registry.WithSources(src), registry.WithDialGuard(guard)),
	}, nil
}

// options are the registry client options for this access.
func (a *access) options() []registry.Option {
	return []registry.Option{
		registry.WithKeychain(a.keychain),
		registry.WithInsecure(a.sources.Insecure),
		registry.WithRegistryCheck(a.guard.CheckRegistry),
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
