package worker

import (
	"fmt"
	"net/http"
	"os"

	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/mirrors"
	"github.com/regcap/regcap/internal/registry"
)

// access is how the worker reaches registries: credentials, sources.yaml,
// the SSRF guard and the per-host transports built from them.
type access struct {
	keychain   *registry.DockerConfig
	sources    *registry.Sources
	guard      *registry.Guard
	transports *registry.Transports
	mirrors    *mirrors.Resolver // nil: no mirror configured
}

// newAccess loads the files the configuration names; any problem with
// them is a start-up error, so that a typo never silently means anonymous
// pulls or unverified TLS.
func newAccess(cfg *Config, log *zap.Logger) (*access, error) {
	kc, err := registry.LoadDockerConfig(cfg.DockerConfig, registry.WithReloadErrors(func(err error) {
		log.Warn("re-reading the docker config failed; keeping the previous credentials", zap.Error(err))
	}))
	if err != nil {
		return nil, fmt.Errorf("--docker-config: %w", err)
	}
	src, err := registry.LoadSources(cfg.Sources)
	if err != nil {
		return nil, fmt.Errorf("--sources: %w", err)
	}
	guard, err := registry.NewGuard(cfg.DenyCIDRs, cfg.AllowRegistries)
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
	if cfg.Sources != "" {
		log.Info("registry sources loaded", zap.String("path", cfg.Sources))
	}
	topts := []registry.TransportsOption{registry.WithSources(src), registry.WithDialGuard(guard)}
	if cfg.Lookup != nil {
		topts = append(topts, registry.WithLookup(cfg.Lookup))
	}
	a := &access{keychain: kc, sources: src, guard: guard}
	if cfg.HostsDir != "" || cfg.RegistriesConf != "" || cfg.MirrorsOnly {
		a.mirrors = mirrors.New(mirrors.WithHostsDir(cfg.HostsDir), mirrors.WithRegistriesConf(cfg.RegistriesConf),
			mirrors.WithMirrorsOnly(cfg.MirrorsOnly),
			mirrors.WithErrorHandler(func(path string, err error) {
				log.Warn("re-reading a mirror configuration file failed; keeping its previous version", zap.String("path", path), zap.Error(err))
			}))
		if err := a.mirrors.Check(); err != nil {
			return nil, fmt.Errorf("--hosts-dir/--registries-conf: %w", err)
		}
		log.Info("registry mirrors configured, files re-read when they change",
			zap.String("hosts_dir", cfg.HostsDir), zap.String("registries_conf", cfg.RegistriesConf), zap.Bool("mirrors_only", cfg.MirrorsOnly))
		topts = append(topts, registry.WithTLSHook(a.mirrors.ApplyTLS))
	}
	a.transports = registry.NewTransports(topts...)
	return a, nil
}

// puller is the registry client for this access; wrap counts and times
// every HTTP request it makes.
func (a *access) puller(cfg *Config, wrap func(func(string) http.RoundTripper) func(string) http.RoundTripper, observe func(registry.Fetch)) *registry.Puller {
	opts := []registry.Option{registry.WithFetchObserver(observe)}
	if a.mirrors != nil {
		opts = append(opts, registry.WithEndpoints(a.mirrors))
	}
	return registry.New(append(opts,
		registry.WithKeychain(a.keychain),
		registry.WithInsecure(a.sources.Insecure),
		registry.WithRegistryCheck(a.guard.CheckRegistry),
		registry.WithUserAgent("regcap/"+cfg.Version),
		registry.WithLimits(cfg.ManifestLimit, cfg.BlobLimit),
		registry.WithBaseTransport(wrap(a.transports.For)),
	)...)
}
