package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// NATSCluster is a cluster of nats-server processes on loopback, routed
// to each other, so that a test can kill a node with SIGKILL (an
// in-process server can only be shut down politely). Its methods may be
// called from any goroutine.
type NATSCluster struct {
	t     testing.TB
	bin   string
	mu    sync.Mutex // guards the nodes' cmd and out
	nodes []*natsNode
}

type natsNode struct {
	name                     string
	conf                     string
	port, clusterPort, mPort int
	cmd                      *exec.Cmd
	done                     chan struct{} // closed when cmd has exited
	out                      *SyncBuffer
}

// StartNATSCluster starts n nats-server processes in one cluster (named
// "regcap-test"), each with max_payload 16MB like StartNATS, and waits
// until every node has a route to every other. The nodes are killed at
// cleanup; their output is logged if the test failed.
func StartNATSCluster(t testing.TB, n int) *NATSCluster {
	t.Helper()
	c := &NATSCluster{t: t, bin: natsServerBinary(t)}
	dir := t.TempDir()
	ports := FreePorts(t, 3*n)
	for i := range n {
		c.nodes = append(c.nodes, &natsNode{name: fmt.Sprintf("n%d", i), port: ports[3*i], clusterPort: ports[3*i+1], mPort: ports[3*i+2]})
	}
	for i, nd := range c.nodes {
		var routes []string
		for j, o := range c.nodes {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", o.clusterPort))
			}
		}
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
max_payload: 16MB
cluster {
  name: regcap-test
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, nd.name, nd.port, nd.mPort, nd.clusterPort, strings.Join(routes, ", "))
		nd.conf = filepath.Join(dir, nd.name+".conf")
		Must(t, os.WriteFile(nd.conf, []byte(conf), 0o600), "writing %s", nd.conf)
	}
	t.Cleanup(func() {
		for i, nd := range c.nodes {
			c.Kill(i)
			c.mu.Lock()
			out := nd.out
			c.mu.Unlock()
			if t.Failed() && out != nil {
				t.Logf("nats-server %s:\n%s", nd.name, out.String())
			}
		}
	})
	for i := range c.nodes {
		c.Start(i)
	}
	c.WaitRoutes()
	return c
}

// URL is every node's client URL, comma-separated, as NATS_URL takes it.
func (c *NATSCluster) URL() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.NodeURL(i)
	}
	return strings.Join(urls, ",")
}

// NodeURL is node i's client URL.
func (c *NATSCluster) NodeURL(i int) string {
	return "nats://127.0.0.1:" + strconv.Itoa(c.nodes[i].port)
}

// Len is the number of nodes.
func (c *NATSCluster) Len() int { return len(c.nodes) }

// Node returns the index of the node whose client URL is url, or -1.
func (c *NATSCluster) Node(url string) int {
	for i := range c.nodes {
		if c.NodeURL(i) == url {
			return i
		}
	}
	return -1
}

// Start (re)starts node i with its configuration and waits until it
// accepts connections; it does not wait for its routes (WaitRoutes).
func (c *NATSCluster) Start(i int) {
	c.t.Helper()
	nd := c.nodes[i]
	c.mu.Lock()
	if nd.cmd != nil {
		c.mu.Unlock()
		return
	}
	out, done := &SyncBuffer{}, make(chan struct{})
	cmd := exec.Command(c.bin, "-c", nd.conf)
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Start()
	if err == nil {
		nd.cmd, nd.done, nd.out = cmd, done, out
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
	}
	c.mu.Unlock()
	Must(c.t, err, "starting nats-server %s", nd.name)
	Eventually(c.t, "nats-server "+nd.name+" to accept connections", func() bool {
		select {
		case <-done:
			c.t.Fatalf("nats-server %s exited:\n%s", nd.name, out.String())
		default:
		}
		_, err := c.monitor(i, "healthz")
		return err == nil
	})
}

// Kill kills node i with SIGKILL (no goodbye to its clients or routes)
// and waits for it to exit.
func (c *NATSCluster) Kill(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	nd := c.nodes[i]
	if nd.cmd == nil {
		return
	}
	_ = nd.cmd.Process.Kill()
	<-nd.done
	nd.cmd = nil
}

func (c *NATSCluster) running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].cmd != nil
}

// WaitRoutes waits until every running node has a route to every other
// running node: from then on, interest registered on one node reaches
// the others.
func (c *NATSCluster) WaitRoutes() {
	c.t.Helper()
	Eventually(c.t, "the NATS cluster's routes", func() bool {
		running := map[string]bool{}
		for i, nd := range c.nodes {
			if c.running(i) {
				running[nd.name] = true
			}
		}
		for i, nd := range c.nodes {
			if !running[nd.name] {
				continue
			}
			body, err := c.monitor(i, "routez")
			if err != nil {
				return false
			}
			var rz struct {
				Routes []struct {
					RemoteName string `json:"remote_name"`
				} `json:"routes"`
			}
			if json.Unmarshal(body, &rz) != nil {
				return false
			}
			peers := map[string]bool{}
			for _, r := range rz.Routes {
				if running[r.RemoteName] {
					peers[r.RemoteName] = true
				}
			}
			if len(peers) != len(running)-1 {
				return false
			}
		}
		return true
	})
}

// monitor GETs a monitoring endpoint of node i.
func (c *NATSCluster) monitor(i int, endpoint string) ([]byte, error) {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/%s", c.nodes[i].mPort, endpoint))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", endpoint, resp.Status)
	}
	return body, nil
}

var natsServer struct {
	once sync.Once
	path string
	err  error
}

// natsServerBinary builds nats-server from the module cache, at the
// version go.mod requires, once per machine: into a folder of the
// temporary directory named after the version, shared by the test
// binaries (each builds to a temporary name and renames, so that they
// never run a half-written file).
func natsServerBinary(t testing.TB) string {
	t.Helper()
	natsServer.once.Do(func() {
		version := "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, d := range bi.Deps {
				if d.Path == "github.com/nats-io/nats-server/v2" {
					version = d.Version
				}
			}
		}
		dir := filepath.Join(os.TempDir(), "regcap-nats-server-"+version)
		natsServer.path = filepath.Join(dir, "nats-server")
		if _, err := os.Stat(natsServer.path); err == nil && version != "unknown" {
			return
		}
		if natsServer.err = os.MkdirAll(dir, 0o755); natsServer.err != nil {
			return
		}
		tmp, err := os.CreateTemp(dir, "nats-server-*")
		if err != nil {
			natsServer.err = err
			return
		}
		_ = tmp.Close()
		cmd := exec.Command("go", "build", "-o", tmp.Name(), "github.com/nats-io/nats-server/v2")
		if out, err := cmd.CombinedOutput(); err != nil {
			_ = os.Remove(tmp.Name())
			natsServer.err = fmt.Errorf("go build github.com/nats-io/nats-server/v2: %v\n%s", err, out)
			return
		}
		natsServer.err = os.Rename(tmp.Name(), natsServer.path)
	})
	Must(t, natsServer.err, "building nats-server")
	return natsServer.path
}
