package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/rediscache"
)

// connectRedis makes the Redis client of --redis-url, and says at
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
	if w.rdb, err = rediscache.NewClient(cfg.RedisURL, cfg.RedisMode); err != nil {
		return fmt.Errorf("--redis-url %q: want redis://[user:password@]host:port[/db] or rediss://…: %w", redactURL(cfg.RedisURL), err)
	}
	// go-redis logs every failed dial through a global logger; the
	// cache reports outages once, so its lines go to debug.
	redis.SetLogger(redisLog{w.log.Named("redis")})
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := w.rdb.Ping(pctx).Err(); err != nil {
		w.log.Warn("redis not reachable at start-up: serving from memory and registries until it is", zap.String("url", redactURL(cfg.RedisURL)), zap.Error(err))
	} else {
		w.log.Info("sharing the cache through redis", zap.String("url", redactURL(cfg.RedisURL)), zap.Bool("values_signed", cfg.CacheKey != ""))
	}
	return nil
}

// redisLog sends go-redis's internal log lines to zap at debug level.
type redisLog struct{ log *zap.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}
