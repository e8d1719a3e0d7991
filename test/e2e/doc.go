// Package e2e holds the tests that need a whole worker: a real NATS
// server, Redis and registry on loopback, and a worker built by
// worker.New (through internal/testworker), exactly as cmd/worker builds
// it. It is the one place for them; every other test runs at its own
// layer (the NATS front in internal/queue against a stub resolver, the
// resolver in internal/resolve against Redis and a registry, without
// NATS). A test belongs here only when what it claims is only true of
// the assembled worker:
//
//   - TestCapabilitiesByteForByte: the contract's bodies as a NATS client
//     receives them, for every function and manifest kind, through every
//     layer at once (decode, fetch, cache, reply);
//   - TestStaleAnswerOnTheWire: a stale answer's Regcap-Cache and
//     Regcap-Age as the Go client reads them, and the worker's metrics
//     counting it (the resolver decides it is stale, the front writes the
//     headers, the worker wires the metrics);
//   - TestReplyOverMaxPayload: an answer another worker stored in the
//     shared Redis, from behind a NATS server with a larger max_payload,
//     is a 413 on this one and counted so: it takes two workers, two NATS
//     servers and one Redis;
//   - TestSmallMaxPayloadKeepsLimits: worker.New checks the NATS server's
//     max_payload against the size limits, and keeps them: an index over
//     max_payload resolves to a config answer that fits, and the index
//     itself is the front's 413;
//   - TestRedisOutageOnTheMetrics: the worker's regcap_redis_available
//     gauge follows the resolver's view of Redis;
//   - BenchmarkHitPath: the hit path as a client sees it, from the memory
//     tier and from Redis, against a NATS echo floor.
//
// The HTTP front's whole-worker tests live here too, in http_*_test.go.
package e2e
