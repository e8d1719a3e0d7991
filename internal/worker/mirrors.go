package worker

import (
	"go.uber.org/zap"

	"github.com/regcap/regcap/internal/registry"
)

// fetchObserver returns what the Puller calls with each endpoint's
// answer: the endpoint metrics (which endpoint served, rate-limit
// budgets) and a debug log naming the endpoint. Call it once per worker.
func (w *Worker) fetchObserver() func(registry.Fetch) {
	ep := w.metrics.NewEndpoints()
	log := w.log.Named("mirrors")
	return func(f registry.Fetch) {
		ep.Fetch(f.Registry, f.Endpoint, f.Mirror, f.Err == nil, f.RateLimitLimit, f.RateLimitRemaining, f.RetryAfter)
		if f.Err == nil && f.Mirror {
			log.Debug("served by a mirror", zap.String("registry", f.Registry), zap.String("endpoint", f.Endpoint))
		} else if f.Err != nil && f.Mirror {
			log.Debug("mirror failed; trying the next endpoint if any", zap.String("registry", f.Registry), zap.String("endpoint", f.Endpoint), zap.Error(f.Err))
		}
	}
}
