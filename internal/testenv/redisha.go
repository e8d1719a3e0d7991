package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCluster is a Redis Cluster on loopback, formed with redis-cli
// --cluster create.
type RedisCluster struct {
	Nodes []*Redis
}

// StartRedisCluster starts masters redis-server nodes in cluster mode,
// each with replicas replicas, and forms a cluster of them; it stops at
// cleanup. A master is failed over after two seconds without an answer.
func StartRedisCluster(t testing.TB, masters, replicas int) *RedisCluster {
	t.Helper()
	bin := LookPath(t, "redis-server", "redis-server")
	cli := LookPath(t, "redis-cli", "redis-tools")
	c := &RedisCluster{}
	var addrs []string
	for range masters * (1 + replicas) {
		r := &Redis{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t)}
		r.args = []string{"--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(r.dir, "nodes.conf"), "--cluster-node-timeout", "2000"}
		r.Start()
		t.Cleanup(r.Stop)
		c.Nodes = append(c.Nodes, r)
		addrs = append(addrs, r.Addr())
	}
	args := append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	out, err := exec.Command(cli, args...).CombinedOutput()
	Must(t, err, "redis-cli --cluster create: %s", out)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer cc.Close()
	Eventually(t, "the cluster to be ready", func() bool {
		ctx := context.Background()
		if cc.Ping(ctx).Err() != nil {
			return false
		}
		// Every node agrees that the cluster is up (one that has not yet
		// heard of all slots answers CLUSTERDOWN), and every replica has
		// its master's data, before a test starts.
		for _, n := range c.Nodes {
			role, err := n.role(ctx)
			if err != nil || role == "slave" && !n.synced(ctx) || !n.clusterOK(ctx) {
				return false
			}
		}
		return true
	})
	return c
}

// URL is the cluster's URL in go-redis's form: the first node, and the
// others as addr parameters.
func (c *RedisCluster) URL() string {
	var q []string
	for _, n := range c.Nodes[1:] {
		q = append(q, "addr="+n.Addr())
	}
	return "redis://" + c.Nodes[0].Addr() + "?" + strings.Join(q, "&")
}

// Master returns a master node and the replica that would take its place.
func (c *RedisCluster) Master(t testing.TB) (master, replica *Redis) {
	t.Helper()
	ctx := context.Background()
	for _, m := range c.Nodes {
		if role, err := m.role(ctx); err != nil || role != "master" {
			continue
		}
		for _, r := range c.Nodes {
			if r.masterPort(ctx) == m.Port {
				return m, r
			}
		}
	}
	t.Fatal("no master with a replica in the cluster")
	return nil, nil
}

// admin is a client for one inspection of the node: short timeouts, no
// retries; close it after use.
func (r *Redis) admin() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: r.Addr(), DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
}

// role is what ROLE says the node is: master, slave or sentinel.
func (r *Redis) role(ctx context.Context) (string, error) {
	c := r.admin()
	defer c.Close()
	v, err := c.Do(ctx, "ROLE").Slice()
	if err != nil || len(v) == 0 {
		return "", fmt.Errorf("ROLE on %s: %v", r.Addr(), err)
	}
	s, _ := v[0].(string)
	return s, nil
}

// clusterOK reports whether the node says the cluster is up.
func (r *Redis) clusterOK(ctx context.Context) bool {
	c := r.admin()
	defer c.Close()
	info, err := c.ClusterInfo(ctx).Result()
	return err == nil && strings.Contains(info, "cluster_state:ok")
}

// IsMaster reports whether the node answers ROLE as a master.
func (r *Redis) IsMaster() bool {
	role, err := r.role(context.Background())
	return err == nil && role == "master"
}

// replication is the node's INFO replication, as fields.
func (r *Redis) replication(ctx context.Context) map[string]string {
	c := r.admin()
	defer c.Close()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return nil
	}
	f := map[string]string{}
	for _, line := range strings.Split(info, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			f[k] = v
		}
	}
	return f
}

// masterPort is the port of the node's master, 0 for a master.
func (r *Redis) masterPort(ctx context.Context) int {
	f := r.replication(ctx)
	if f["role"] != "slave" {
		return 0
	}
	p, _ := strconv.Atoi(f["master_port"])
	return p
}

// synced reports whether a replica's link to its master is up.
func (r *Redis) synced(ctx context.Context) bool {
	return r.replication(ctx)["master_link_status"] == "up"
}

// RedisSentinel is a master, its replica and three sentinels watching
// them, on loopback.
type RedisSentinel struct {
	// Name is the master's name the sentinels know it by.
	Name            string
	Master, Replica *Redis
	Sentinels       []*Redis
}

// StartRedisSentinel starts a master, a replica of it and three
// sentinels with a quorum of two, which fail the master over one second
// after it stops answering. Everything stops at cleanup.
func StartRedisSentinel(t testing.TB) *RedisSentinel {
	t.Helper()
	bin := LookPath(t, "redis-server", "redis-server")
	s := &RedisSentinel{Name: "regcap"}
	s.Master = &Redis{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t)}
	s.Master.Start()
	t.Cleanup(s.Master.Stop)
	s.Replica = &Redis{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t)}
	s.Replica.args = []string{"--replicaof", "127.0.0.1", strconv.Itoa(s.Master.Port)}
	s.Replica.Start()
	t.Cleanup(s.Replica.Stop)
	ctx := context.Background()
	Eventually(t, "the replica to sync", func() bool { return s.Replica.synced(ctx) })
	for range 3 {
		n := &Redis{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t)}
		// A sentinel rewrites its configuration file as it learns.
		n.conf = filepath.Join(n.dir, "sentinel.conf")
		conf := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
			"sentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 5000\n"+
			"sentinel parallel-syncs %[1]s 1\n", s.Name, s.Master.Port)
		Must(t, os.WriteFile(n.conf, []byte(conf), 0o600), "writing sentinel.conf")
		n.args = []string{"--sentinel"}
		n.Start()
		t.Cleanup(n.Stop)
		s.Sentinels = append(s.Sentinels, n)
	}
	// Each sentinel knows the replica and the two other sentinels before
	// anything is killed, or a failover could not reach its quorum.
	Eventually(t, "the sentinels to know each other and the replica", func() bool {
		for _, n := range s.Sentinels {
			c := n.sentinel()
			m, err := c.Master(ctx, s.Name).Result()
			c.Close()
			if err != nil || m["num-other-sentinels"] != "2" || m["num-slaves"] != "1" {
				return false
			}
		}
		return true
	})
	return s
}

// sentinel is a Sentinel API client of the node, as admin is.
func (r *Redis) sentinel() *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: r.Addr(), DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
}

// URL is the set's URL in go-redis's failover form: the first sentinel,
// the others as addr parameters, and the master's name.
func (s *RedisSentinel) URL() string {
	q := []string{"master_name=" + s.Name}
	for _, n := range s.Sentinels[1:] {
		q = append(q, "addr="+n.Addr())
	}
	return "redis://" + s.Sentinels[0].Addr() + "?" + strings.Join(q, "&")
}

// MasterAddr is the master's address as the first sentinel that answers
// gives it.
func (s *RedisSentinel) MasterAddr() string {
	for _, n := range s.Sentinels {
		c := n.sentinel()
		a, err := c.GetMasterAddrByName(context.Background(), s.Name).Result()
		c.Close()
		if err == nil && len(a) == 2 {
			return a[0] + ":" + a[1]
		}
	}
	return ""
}
