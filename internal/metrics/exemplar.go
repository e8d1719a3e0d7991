package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regcap/regcap/contract"
)

// RequestTraced counts one answered request as Request does, its latency
// an exemplar pointing to traceID (queue.ExemplarObserver): from a slow
// bucket of the histogram, Grafana opens the trace of one such request.
// The front passes only the IDs of sampled traces, which were exported.
func (m *Metrics) RequestTraced(fn contract.Function, code int, outcome contract.Outcome, elapsed time.Duration, traceID string) {
	m.request(fn, code, outcome, elapsed, traceID)
}

// observe records elapsed in o, with an exemplar for traceID when there
// is one. Exemplars show in the OpenMetrics exposition only, which
// Prometheus asks for.
func observe(o prometheus.Observer, elapsed time.Duration, traceID string) {
	if traceID != "" {
		if eo, ok := o.(prometheus.ExemplarObserver); ok {
			eo.ObserveWithExemplar(elapsed.Seconds(), prometheus.Labels{"trace_id": traceID})
			return
		}
	}
	o.Observe(elapsed.Seconds())
}
