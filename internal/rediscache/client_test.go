package rediscache

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestNewClient checks which client each URL and --redis-mode gets,
// and that a malformed one is an error that says what is wrong, never a
// panic (go-redis panics on some failover options).
func TestNewClient(t *testing.T) {
	cases := []struct {
		url, mode string
		want      string // single, sentinel or cluster; "" for an error
		err       string
	}{
		{url: "redis://127.0.0.1:6379", want: "single"},
		{url: "rediss://user:pw@127.0.0.1:6380/2", want: "single"},
		{url: "redis://127.0.0.1:26379?master_name=m&addr=127.0.0.1:26380", want: "sentinel"},
		{url: "redis://127.0.0.1:26379?master_name=m", want: "sentinel"},
		{url: "redis://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002", want: "cluster"},
		{url: "redis://127.0.0.1:7000", mode: ModeCluster, want: "cluster"},
		{url: "redis://127.0.0.1:6379", mode: ModeSingle, want: "single"},
		{url: "redis://127.0.0.1:6379?dial_timeout=3s", want: "single"},

		{url: "redis://127.0.0.1:26379", mode: ModeSentinel, err: "no master_name"},
		{url: "redis://127.0.0.1:26379?master_name=m&route_by_latency=true", err: "replicas"},
		{url: "redis://127.0.0.1:26379?master_name=m&route_randomly=true", err: "replicas"},
		{url: "redis://127.0.0.1:26379?master_name=m&replica_only=true", err: "replicas"},
		{url: "redis://127.0.0.1:6379", mode: "ring", err: "want single, sentinel or cluster"},
		{url: "http://127.0.0.1:6379", err: "scheme"},
		{url: "redis://127.0.0.1:6379?master_name=m&addr=nohost", err: "addr"},
		{url: "redis://127.0.0.1:7000?addr=127.0.0.1", err: "addr"},
		{url: "redis://127.0.0.1:6379/x", err: "database"},
		{url: "redis://127.0.0.1:6379?bogus=1", mode: ModeSingle, err: "bogus"},
	}
	for _, tc := range cases {
		t.Run(tc.url+" "+tc.mode, func(t *testing.T) {
			c, err := NewClient(tc.url, tc.mode)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := "single"
			switch cc := c.(type) {
			case *redis.ClusterClient:
				got = "cluster"
				if cc.Options().ClusterStateReloadInterval != time.Second {
					t.Errorf("slot map reloaded every %v, want 1s", cc.Options().ClusterStateReloadInterval)
				}
			case *redis.Client:
				if strings.Contains(tc.url, "master_name") || tc.mode == ModeSentinel {
					got = "sentinel" // a failover client is a *redis.Client too
				}
				want := 500 * time.Millisecond
				if strings.Contains(tc.url, "dial_timeout=3s") {
					want = 3 * time.Second // the URL's own wins
				}
				if o := cc.Options(); o.DialTimeout != want || o.ReadTimeout != 500*time.Millisecond {
					t.Errorf("dial timeout %v, read timeout %v; want %v and 500ms", o.DialTimeout, o.ReadTimeout, want)
				}
			}
			if got != tc.want {
				t.Errorf("got a %s client, want %s", got, tc.want)
			}
		})
	}
}
