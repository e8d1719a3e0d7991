package testenv

import (
	"net"
	"strconv"
	"sync/atomic"
	"testing"
)

// CountingListener is a TCP listener on a loopback address that only
// counts the connections it accepts (and hangs up on them): the target of
// tests that check that nothing connects somewhere, e.g. the SSRF guard on
// a denied loopback address, or a proxy that must not be used.
type CountingListener struct {
	ln        net.Listener
	accepted  atomic.Int64
	sentinels atomic.Int64
	sentinel  chan struct{}
}

// ListenCounting listens on addr (a loopback host:port, port 0 for any)
// until the test ends.
func ListenCounting(t testing.TB, addr string) *CountingListener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	Must(t, err, "listening on %s", addr)
	t.Cleanup(func() { ln.Close() })
	cl := &CountingListener{ln: ln, sentinel: make(chan struct{}, 1)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cl.accepted.Add(1)
			buf := make([]byte, 1)
			if n, _ := c.Read(buf); n == 1 && buf[0] == '!' {
				cl.sentinels.Add(1)
				cl.sentinel <- struct{}{}
			}
			c.Close()
		}
	}()
	return cl
}

// Addr is the listener's host:port.
func (cl *CountingListener) Addr() string { return cl.ln.Addr().String() }

// Port is the listener's port.
func (cl *CountingListener) Port() string { return strconv.Itoa(cl.ln.Addr().(*net.TCPAddr).Port) }

// Accepted is the number of connections accepted so far, sentinels of
// CountBefore left out. Connections still in the accept queue may not be
// counted yet: to know that none came, use CountBefore.
func (cl *CountingListener) Accepted() int64 { return cl.accepted.Load() - cl.sentinels.Load() }

// CountBefore returns how many connections were accepted before a sentinel
// connection made now. The accept queue is FIFO, so any earlier connection
// is counted by the time the sentinel is seen.
func (cl *CountingListener) CountBefore(t testing.TB) int64 {
	t.Helper()
	c, err := net.Dial("tcp", cl.Addr())
	Must(t, err, "sentinel connection")
	_, _ = c.Write([]byte("!"))
	<-cl.sentinel
	c.Close()
	return cl.Accepted()
}
