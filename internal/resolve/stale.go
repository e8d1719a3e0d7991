package resolve

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/rediscache"
)

// staleWorthy reports whether a failure may be answered with a stale
// entry: the registry is rate-limiting, failing, slow or unreachable. A
// revoked credential or a deleted tag (401, 403, 404) must show, and so
// must a bad request.
func staleWorthy(err error) bool {
	ce := contract.AsError(err)
	return ce.Code == 429 || ce.Code >= 500
}

// staleUsable reports whether e, an entry past its TTL, was fetched
// within --stale-if-error and may still answer a failed fetch.
func (r *Resolver) staleUsable(e *rediscache.Entry) bool {
	return e != nil && r.now().Sub(e.Fetched) <= r.staleIfError
}

// orStale answers err, or the stale entry when err is stale-worthy and the
// entry was fetched within --stale-if-error.
func (r *Resolver) orStale(err error, stale *rediscache.Entry) (resolved, error) {
	if !r.staleUsable(stale) || !staleWorthy(err) {
		return resolved{}, err
	}
	r.log.Info("registry failed: answering stale", zap.Duration("age", r.now().Sub(stale.Fetched)), zap.Error(err))
	return r.staleAnswer(*stale), nil
}

func (r *Resolver) staleAnswer(e rediscache.Entry) resolved {
	return resolved{body: e.Body, outcome: contract.Stale, age: r.now().Sub(e.Fetched)}
}

// backOff records that q's key was answered stale after err, a failed
// fetch: for one TTL, no worker of the fleet fetches it again; after a
// 429, no stale key of its registry is fetched before its Retry-After,
// which is trusted up to the stale window: past it nothing is left to
// answer with anyway.
func (r *Resolver) backOff(q query, err error) {
	r.setBackoff(q.key, q.ttl)
	ce := contract.AsError(err)
	if d, ok := contract.ParseRetryAfter(ce.RetryAfter, r.now()); ok && ce.Code == 429 && d > 0 {
		r.setBackoff(registryBackoff(q.registry), min(d, r.staleIfError))
	}
}

func (r *Resolver) setBackoff(key string, d time.Duration) {
	r.backoff.Set(key, r.now().Add(d))
	if r.shared != nil {
		r.shared.SetBackoff(r.life, key, d)
	}
}

func registryBackoff(host string) string { return "registry:" + host }

// clearRegistryBackoff ends q's registry's 429 back-off after it answered
// a fetch, in this worker and, when this worker knew of one, for the
// fleet: a success costs no Redis command unless a back-off was set.
func (r *Resolver) clearRegistryBackoff(q query) {
	k := registryBackoff(q.registry)
	if _, ok := r.backoff.GetIfPresent(k); !ok {
		return
	}
	r.backoff.Invalidate(k)
	if r.shared != nil {
		r.shared.ClearBackoff(r.life, k)
	}
}

// backingOff reports whether this worker or the fleet is backing off
// q's fetch: its key, or its registry after a 429.
func (r *Resolver) backingOff(ctx context.Context, q query) bool {
	keys := []string{q.key, registryBackoff(q.registry)}
	for _, k := range keys {
		if until, ok := r.backoff.GetIfPresent(k); ok && r.now().Before(until) {
			return true
		}
	}
	return r.shared != nil && r.shared.BackingOff(ctx, keys...)
}
