package testenv

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// HangingListener is a TCP listener on a loopback address that accepts
// connections and never answers, holding them open until the test ends:
// the sick registry of bulkhead tests, as a registry that hangs looks.
type HangingListener struct {
	ln       net.Listener
	accepted atomic.Int64
	mu       sync.Mutex
	conns    []net.Conn
}

// ListenHanging listens on a free loopback port until the test ends.
func ListenHanging(t testing.TB) *HangingListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	Must(t, err, "listening")
	h := &HangingListener{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range h.conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
		}
	}()
	return h
}

// Addr is the listener's host:port, a registry host for references.
func (h *HangingListener) Addr() string { return h.ln.Addr().String() }

// Accepted is the number of connections accepted so far.
func (h *HangingListener) Accepted() int64 { return h.accepted.Load() }
