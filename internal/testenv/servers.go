// Package testenv starts the real servers regcap's tests talk to: a
// redis-server process, an embedded NATS server and an in-process OCI
// registry that counts and can hold requests. Every server listens on a
// free loopback port and is stopped by t.Cleanup.
package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"

	"github.com/regcap/regcap/client"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago, for servers configured before any of them starts (FreePort
// called n times may give the same port twice: each is closed before
// the next is asked for).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// Redis is a redis-server process on a loopback port.
type Redis struct {
	// conf is a configuration file given first (a sentinel's), and args
	// are extra arguments (a cluster node's, a replica's).
	conf string
	args []string
	t    testing.TB
	bin  string
	dir  string
	Port int
	cmd  *exec.Cmd
}

// LookPath finds a server binary, failing the test with what to install.
func LookPath(t testing.TB, bin, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/usr/local/bin"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err == nil {
			return filepath.Join(dir, bin)
		}
	}
	t.Fatalf("%s not found: run `make test`, which installs it, or `apt-get install %s`", bin, pkg)
	return ""
}

// StartRedis starts redis-server without persistence on a free port.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	r := &Redis{t: t, bin: LookPath(t, "redis-server", "redis-server"), dir: t.TempDir(), Port: FreePort(t)}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Addr is host:port.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.Port) }

// URL is the redis:// URL.
func (r *Redis) URL() string { return "redis://" + r.Addr() }

// Start (re)starts the server on its port and waits until it answers.
func (r *Redis) Start() {
	r.t.Helper()
	if r.cmd != nil {
		return
	}
	var args []string
	if r.conf != "" {
		args = append(args, r.conf)
	}
	args = append(args, "--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--protected-mode", "no")
	cmd := exec.Command(r.bin, append(args, r.args...)...)
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("starting redis-server: %v", err)
	}
	r.cmd = cmd
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server on %s did not answer: %v", r.Addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (SIGKILL: no goodbye to its clients, replicas or
// sentinels) and waits for it to exit.
func (r *Redis) Stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// Client returns a client for the server, closed at cleanup.
func (r *Redis) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// StartNATS starts an embedded NATS server on a free loopback port, with
// the worker's embedded max_payload (16 MiB, room for the default size
// limits); opts adjust its options (nats-server's default 1 MiB, say).
func StartNATS(t testing.TB, opts ...func(*natsserver.Options)) *natsserver.Server {
	t.Helper()
	o := &natsserver.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, MaxPayload: 16 << 20}
	for _, f := range opts {
		f(o)
	}
	ns, err := natsserver.NewServer(o)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

// MaxPayload sets a NATS server's max_payload, for StartNATS.
func MaxPayload(n int32) func(*natsserver.Options) {
	return func(o *natsserver.Options) { o.MaxPayload = n }
}

// Connect opens a NATS connection closed at cleanup.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connecting to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Eventually polls cond until it holds or the (generous) limit passes. It
// waits for state, it does not measure speed.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Must fails the test on err.
func Must(t testing.TB, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}

// Client returns a fleet client on its own connection.
func Client(t testing.TB, natsURL string, opts ...client.Option) *client.Client {
	t.Helper()
	return client.New(Connect(t, natsURL), append([]client.Option{client.WithTimeout(30 * time.Second)}, opts...)...)
}

// QuietRedisLogs silences go-redis's own log lines, which it writes
// through a package-wide logger on every failed dial: call it from a
// TestMain whose tests stop Redis on purpose.
func QuietRedisLogs() { redis.SetLogger(quietRedis{}) }

type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// RoundTrips counts the round trips a go-redis client makes, added with
// AddHook: one per command or pipeline sent, except a new connection's
// handshake (HELLO, CLIENT SETINFO), which go-redis makes whenever its
// pool dials.
type RoundTrips struct{ N atomic.Int64 }

// DialHook is go-redis's: dials are not counted.
func (c *RoundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook counts a command.
func (c *RoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() != "hello" {
			c.N.Add(1)
		}
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook counts a pipeline.
func (c *RoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if cmds[0].Name() != "client" {
			c.N.Add(1)
		}
		return next(ctx, cmds)
	}
}
