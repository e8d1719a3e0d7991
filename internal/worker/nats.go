package worker

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/nats-io/nats.go"
	"github.com/regcap/regcap/internal/metrics"
	"go.uber.org/zap"
)

// startNATS connects to NATS_URL, or starts an embedded server when it
// is empty.
func (w *Worker) startNATS() (err error) {
	w.natsURL = w.cfg.NATSURL
	if w.natsURL == "" {
		if w.embedded, err = startEmbeddedNATS(w.cfg.EmbeddedNATSAddr); err != nil {
			return err
		}
		w.natsURL = w.embedded.ClientURL()
		w.log.Warn("NATS_URL not set: started an embedded NATS server; only clients of this host can reach it",
			zap.String("url", w.natsURL))
	}
	w.nc, err = connectNATS(w.natsURL, w.log, w.metrics, w.confirmSubscriptions)
	return err
}

// confirmSubscriptions marks the current connection ready once a flush
// shows that the server has the subscriptions nats.go sent it (after a
// reconnect they are re-sent before the handlers run). It runs on
// nats.go's callback goroutine after each (re)connect, and gives up when
// that connection is lost: the next reconnect confirms again.
func (w *Worker) confirmSubscriptions(nc *nats.Conn) {
	if !w.serving.Load() {
		return // New confirms once the front has subscribed
	}
	gen := nc.Stats().Reconnects
	for nc.IsConnected() && nc.Stats().Reconnects == gen {
		err := nc.FlushTimeout(5 * time.Second)
		if err == nil {
			if nc.Stats().Reconnects == gen {
				w.natsReady.Store(int64(gen))
			}
			return
		}
		w.log.Warn("NATS connected but the subscriptions are not confirmed yet; /readyz says 503 until they are", zap.Error(err))
	}
}

// connectNATS connects to url, a comma-separated list of servers that
// nats.go shuffles and fails over between (the servers of a cluster it
// learns from them too). onConnect runs after every (re)connect, on
// nats.go's callback goroutine.
func connectNATS(url string, log *zap.Logger, m *metrics.Metrics, onConnect func(*nats.Conn)) (*nats.Conn, error) {
	// While NATS is unreachable the worker says so: at start, then at
	// most once every few seconds however fast it retries.
	var lastWarn atomic.Int64
	warnEvery := func() bool {
		now := time.Now().UnixNano()
		last := lastWarn.Load()
		return now-last >= int64(5*time.Second) && lastWarn.CompareAndSwap(last, now)
	}
	nc, err := nats.Connect(url,
		nats.Name("regcap-worker"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if c.IsClosed() {
				return // our own Close at shutdown, not an outage
			}
			log.Warn("NATS disconnected; reconnecting", zap.Error(err))
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			m.NATSReconnected()
			log.Info("NATS reconnected", zap.String("url", c.ConnectedUrlRedacted()))
			onConnect(c)
		}),
		nats.ConnectHandler(func(c *nats.Conn) {
			log.Info("NATS connected", zap.String("url", c.ConnectedUrlRedacted()))
			onConnect(c)
		}),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			if warnEvery() {
				log.Warn("NATS still unreachable; retrying (requests are answered once connected)", zap.Error(err))
			}
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS: %w", err)
	}
	if !nc.IsConnected() {
		warnEvery()
		log.Warn("NATS not reachable at start-up; retrying in the background (requests are answered once connected, /readyz says 503 until then)",
			zap.String("url", redactURL(url)))
	}
	// Connected at once: the connect handler has said so.
	return nc, nil
}

func startEmbeddedNATS(addr string) (*natsserver.Server, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--embedded-nats-addr: %w", err)
	}
	if err := portFree(addr); err != nil {
		return nil, fmt.Errorf("%s is taken: another worker or nats-server is running; set --embedded-nats-addr or NATS_URL", addr)
	}
	// Port -1 is nats-server's "any free port" (0 is its default, 4222).
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("--embedded-nats-addr: bad port %q", port)
	}
	// max_payload large enough for the largest default answer (a 4 MiB
	// manifest and an 8 MiB config), where nats-server's default is 1 MiB.
	ns, err := natsserver.NewServer(&natsserver.Options{Host: host, Port: p, NoSigs: true, NoLog: true, MaxPayload: EmbeddedMaxPayload})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(5 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start on %s (is the port taken?)", addr)
	}
	return ns, nil
}

// EmbeddedMaxPayload is the max_payload of the embedded NATS server: room
// for the largest answer within the default limits. External servers
// need as much (max_payload: 16MB) for the defaults to fit.
const EmbeddedMaxPayload = 16 << 20

// answerOverhead is what an answer adds to the manifest and config it
// holds (the oci_manifest_config wrapper), with room for the reply's
// headers.
const answerOverhead = 4 << 10

// checkMaxPayload says whether the NATS server's max_payload holds the
// largest answer within the size limits. The limits stay what they are:
// they bound what the worker reads, and an index larger than max_payload
// may still resolve to a platform whose answer is small. Only a reply
// that does not fit is refused, as a 413 naming its size.
func checkMaxPayload(nc *nats.Conn, manifest, blob int64, log *zap.Logger) {
	limit := nc.MaxPayload()
	switch {
	case limit <= 0:
		log.Warn("NATS max_payload unknown until connected: an answer larger than it will be answered 413",
			zap.Int64("max_manifest_size", manifest), zap.Int64("max_config_size", blob))
	case manifest+blob+answerOverhead <= limit:
		log.Info("NATS max_payload leaves room for the largest answer", zap.Int64("max_payload", limit),
			zap.Int64("max_manifest_size", manifest), zap.Int64("max_config_size", blob))
	default:
		log.Warn("NATS max_payload is smaller than the largest answer within the size limits: answers over it are refused with a 413 (raise max_payload on the server, e.g. max_payload: 16MB)",
			zap.Int64("max_payload", limit), zap.Int64("max_manifest_size", manifest), zap.Int64("max_config_size", blob))
	}
}

// portFree reports an error when addr cannot be listened on (port 0 and
// nats-server's -1 always can).
func portFree(addr string) error {
	if strings.HasSuffix(addr, ":-1") || strings.HasSuffix(addr, ":0") {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}
