package worker

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/regcap/regcap/internal/httpfront"
	"go.uber.org/zap"
)

func (w *Worker) probes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", w.metrics.Handler())
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(rw, "ok")
	})
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
		if !w.nc.IsConnected() {
			http.Error(rw, "NATS not connected", http.StatusServiceUnavailable)
			return
		}
		if !w.Ready() {
			http.Error(rw, "NATS reconnected, subscriptions not confirmed yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(rw, "ok")
	})
	return mux
}

// serveMetrics serves /metrics, /healthz and /readyz on --metrics-addr,
// if set.
func (w *Worker) serveMetrics() error {
	if w.cfg.MetricsAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", w.cfg.MetricsAddr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("--metrics-addr %s is taken: another worker is running, or set --metrics-addr (empty disables it)", w.cfg.MetricsAddr)
	}
	if err != nil {
		return fmt.Errorf("--metrics-addr: %w", err)
	}
	w.httpAddr = ln.Addr().String()
	w.http = &http.Server{Handler: w.probes(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10, ErrorLog: zap.NewStdLog(w.log.Named("metrics"))}
	go w.serve(w.http, ln, "metrics listener stopped")
	w.log.Info("serving /metrics, /healthz and /readyz", zap.String("addr", w.httpAddr))
	return nil
}

// serveAPI serves the HTTP front on --http-addr, if set.
func (w *Worker) serveAPI() error {
	cfg := &w.cfg
	if cfg.HTTPAddr == "" {
		return nil
	}
	ln, err := httpListener(cfg)
	if err != nil {
		return err
	}
	w.apiAddr = ln.Addr().String()
	w.api = &http.Server{
		Handler: httpfront.New(w.res, httpfront.WithTimeout(cfg.HTTPTimeout), httpfront.WithMaxKeys(cfg.HTTPMaxKeys),
			httpfront.WithMaxInFlight(cfg.HTTPMaxInFlight), httpfront.WithBatchConcurrency(cfg.HTTPBatchConcurrency),
			httpfront.WithMaxReplyBytes(cfg.HTTPMaxReplyBytes), httpfront.WithObserver(w.metrics),
			httpfront.WithTracerProvider(w.tracing.TracerProvider())),
		ReadHeaderTimeout: cfg.HTTPReadHeaderTimeout,
		ReadTimeout:       cfg.HTTPReadTimeout,
		IdleTimeout:       cfg.HTTPIdleTimeout,
		// Past the longest a request can take to be answered, and time to
		// write a full reply: a client that never reads is let go.
		WriteTimeout:   max(cfg.HTTPTimeout, cfg.LockWait+cfg.FetchTimeout, 2*cfg.FetchTimeout) + 10*time.Second,
		MaxHeaderBytes: cfg.HTTPMaxHeaderBytes,
		// TLS handshake errors and the like, structured like every line.
		ErrorLog: zap.NewStdLog(w.log.Named("http")),
	}
	go w.serve(w.api, ln, "HTTP API listener stopped")
	w.log.Info("serving the HTTP APIs", zap.String("addr", w.apiAddr), zap.Bool("tls", !cfg.HTTPPlain), zap.Bool("client_certificates", cfg.ClientCA != ""))
	return nil
}

// serve runs srv on ln until it is shut down; it stops with Shutdown or
// close.
func (w *Worker) serve(srv *http.Server, ln net.Listener, stopped string) {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		w.log.Error(stopped, zap.Error(err))
	}
}
