package worker

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/rediscache"
)

// connectRedis opens the shared cache at --redis-url, and says at
// start-up whether the cache is shared. Redis down at start-up is no
// error: the worker serves from memory and registries until it is back.
func (w *Worker) connectRedis(ctx context.Context) (err error) {
	cfg := &w.cfg
	switch {
	case cfg.RedisURL == "" && cfg.MemorySize == 0:
		w.log.Warn("REDIS_URL not set and --memory-cache-size 0: nothing is cached, every request goes to the registry")
		return nil
	case cfg.RedisURL == "":
		w.log.Warn("REDIS_URL not set: using an in-process cache that is not shared with other workers")
		return nil
	}
	w.cache, err = rediscache.Open(cfg.RedisURL, cfg.RedisMode,
		rediscache.WithCacheKey(cacheKey(cfg.CacheKey)),
		// The largest answer a worker of the fleet may have stored: an
		// oci_manifest_config reply within the size limits.
		rediscache.WithMaxBody(int(cfg.ManifestLimit+cfg.BlobLimit)+answerOverhead),
		rediscache.WithMaxTTL(maxTTL(cfg), cfg.NegativeTTL),
		rediscache.WithErrorHook(w.metrics.RedisError),
		rediscache.WithRejectHook(w.metrics.RedisRejected),
		rediscache.WithRefusedHook(w.metrics.RedisRefused),
		rediscache.WithLogger(w.log.Named("rediscache")),
		rediscache.WithTracerProvider(w.tracing.TracerProvider()))
	if err != nil {
		return fmt.Errorf("--redis-url %q: want redis://[user:password@]host:port[/db] or rediss://…: %w", redactURL(cfg.RedisURL), err)
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := w.cache.Ping(pctx); err != nil {
		w.log.Warn("redis not reachable at start-up: serving from memory and registries until it is", zap.String("url", redactURL(cfg.RedisURL)), zap.Error(err))
	} else {
		w.log.Info("sharing the cache through redis", zap.String("url", redactURL(cfg.RedisURL)), zap.Bool("values_signed", cfg.CacheKey != ""))
	}
	return nil
}

// maxTTL is the longest TTL any worker of the fleet writes with this
// configuration, jitter included, rounded up: the cache refuses to call
// a value fresh past its fetch time plus this, whatever its expiry says.
func maxTTL(cfg *Config) time.Duration {
	ttl := max(cfg.CacheTTL, cfg.ImmutableTTL)
	return time.Duration(float64(ttl)*(1+min(max(cfg.TTLJitter, 0), 0.5))) + time.Second
}

// cacheKey is the --cache-key as the cache takes it: nil for none.
func cacheKey(k string) []byte {
	if k == "" {
		return nil
	}
	return []byte(k)
}
