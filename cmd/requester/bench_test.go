package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testworker"

	"github.com/regcap/regcap/internal/testenv"
)

type benchStatsJSON struct {
	Requests   int            `json:"requests"`
	Errors     int            `json:"errors"`
	Throughput float64        `json:"throughput_per_second"`
	P50        float64        `json:"p50_us"`
	P90        float64        `json:"p90_us"`
	P99        float64        `json:"p99_us"`
	Max        float64        `json:"max_us"`
	Cache      map[string]int `json:"cache"`
}

type benchJSON struct {
	Function   string `json:"function"`
	Mode       string `json:"mode"`
	ReplyBytes int    `json:"reply_bytes"`
	Runs       int    `json:"runs"`
	Levels     []struct {
		Concurrency int             `json:"concurrency"`
		Regcap      benchStatsJSON  `json:"regcap"`
		Echo        *benchStatsJSON `json:"echo"`
		Ratio       *struct {
			Throughput float64 `json:"throughput"`
			P50        float64 `json:"p50"`
			P99        float64 `json:"p99"`
		} `json:"ratio"`
		Head       *benchStatsJSON `json:"head_floor"`
		Relay      *benchStatsJSON `json:"relay_floor"`
		RelayRatio *struct {
			Throughput float64 `json:"throughput"`
		} `json:"relay_ratio"`
	} `json:"levels"`
}

func TestBenchCLI(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	url := ns.ClientURL()
	reg.PushImage(t, "bench/a", "v1", testenv.OCIManifest, "linux/amd64")
	reg.PushImage(t, "bench/b", "v1", testenv.OCIManifest, "linux/amd64")
	a, b := reg.Ref("bench/a", "v1"), reg.Ref("bench/b", "v1")

	t.Run("warm, json", func(t *testing.T) {
		code, out, errs := cli(t, b+"\n", "bench", a, "-f", "-", "--function", "config", "--concurrency", "1,2", "--concurrency", "4",
			"--requests", "20", "--warmup", "0s", "--runs", "2", "--nats-url", url, "-o", "json")
		if code != exitOK {
			t.Fatalf("exit %d, stderr:\n%s", code, errs)
		}
		var r benchJSON
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("stdout is not one JSON document: %v\n%s", err, out)
		}
		if r.Function != "v1/oci_manifest_config" || r.Mode != "warm" || r.Runs != 2 || r.ReplyBytes == 0 || len(r.Levels) != 3 {
			t.Fatalf("report: %+v", r)
		}
		for i, l := range r.Levels {
			if l.Concurrency != []int{1, 2, 4}[i] || l.Regcap.Requests != 40 || l.Regcap.Cache[string(contract.Hit)] != 40 || l.Regcap.P50 <= 0 {
				t.Fatalf("level %d: %+v", i, l)
			}
			if l.Echo == nil || l.Echo.Requests != 40 || l.Ratio == nil || l.Ratio.Throughput <= 0 {
				t.Fatalf("level %d echo: %+v %+v", i, l.Echo, l.Ratio)
			}
		}
	})

	t.Run("text table", func(t *testing.T) {
		code, out, errs := cli(t, "", "bench", a, "--requests", "10", "--warmup", "0s", "--nats-url", url)
		if code != exitOK {
			t.Fatalf("exit %d, stderr:\n%s", code, errs)
		}
		for _, want := range []string{"v1/manifest_digest", "regcap", "echo", "regcap/echo", "p99"} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("cold", func(t *testing.T) {
		code, out, errs := cli(t, "", "bench", a, "--cold", "--requests", "10", "--no-echo", "--nats-url", url, "-o", "json")
		if code != exitOK {
			t.Fatalf("exit %d, stderr:\n%s", code, errs)
		}
		var r benchJSON
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		if r.Mode != "cold" || len(r.Levels) != 1 || r.Levels[0].Regcap.Cache[string(contract.Miss)] != 10 || r.Levels[0].Echo != nil {
			t.Fatalf("report: %+v", r)
		}
	})

	// A cold digest run measures regcap, the raw HEAD and the NATS relay
	// on tags of their own: 10 HEADs each reach the registry.
	t.Run("cold, with its floors", func(t *testing.T) {
		before := reg.Count("HEAD", "manifest")
		code, out, errs := cli(t, "", "bench", a, "--cold", "--requests", "10", "--concurrency", "2", "--nats-url", url, "-o", "json")
		if code != exitOK {
			t.Fatalf("exit %d, stderr:\n%s", code, errs)
		}
		var r benchJSON
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatal(err)
		}
		if len(r.Levels) != 1 {
			t.Fatalf("report: %+v", r)
		}
		l := r.Levels[0]
		switch {
		case l.Regcap.Cache[string(contract.Miss)] != 10:
			t.Errorf("regcap: %+v, want 10 misses", l.Regcap)
		case l.Echo != nil:
			t.Errorf("a cold digest run measured the plain echo: %+v", l.Echo)
		case l.Head == nil || l.Head.Requests != 10 || l.Head.Errors != 0:
			t.Errorf("raw HEAD: %+v", l.Head)
		case l.Relay == nil || l.Relay.Requests != 10 || l.Relay.Errors != 0 || l.RelayRatio == nil || l.RelayRatio.Throughput <= 0:
			t.Errorf("relay: %+v %+v", l.Relay, l.RelayRatio)
		}
		if n := reg.Count("HEAD", "manifest") - before; n != 30 {
			t.Errorf("%d manifest HEADs reached the registry, want 30 (10 each for regcap, the raw HEAD and the relay)", n)
		}
	})

	t.Run("exit codes", func(t *testing.T) {
		cases := []struct {
			name string
			args []string
			want int
		}{
			{"missing image", []string{"bench", reg.Ref("bench/none", "v1"), "--requests", "5", "--nats-url", url}, exitFailed},
			{"no images", []string{"bench", "--nats-url", url}, exitUsage},
			{"cold without a count", []string{"bench", a, "--cold", "--nats-url", url}, exitUsage},
			{"bad concurrency", []string{"bench", a, "--concurrency", "0", "--nats-url", url}, exitUsage},
			{"bad function", []string{"bench", a, "--function", "size", "--nats-url", url}, exitUsage},
			{"negative requests", []string{"bench", a, "--requests", "-1", "--nats-url", url}, exitUsage},
			{"zero duration", []string{"bench", a, "--duration", "0s", "--nats-url", url}, exitUsage},
			{"negative duration", []string{"bench", a, "--duration", "-1s", "--nats-url", url}, exitUsage},
			{"negative concurrency", []string{"bench", a, "--concurrency", "1,-2", "--nats-url", url}, exitUsage},
			{"no duration needed with a count", []string{"bench", a, "--requests", "5", "--duration", "0s", "--warmup", "0s", "--no-echo", "--nats-url", url}, exitOK},
		}
		for _, tc := range cases {
			if code, _, errs := cli(t, "", tc.args...); code != tc.want {
				t.Errorf("%s: exit %d, want %d; stderr:\n%s", tc.name, code, tc.want, errs)
			}
		}
	})
}

func TestBenchCLIUnreachable(t *testing.T) {
	ns := testenv.StartNATS(t)
	code, _, errs := cli(t, "", "bench", "busybox", "--requests", "5", "--timeout", "2s", "--nats-url", ns.ClientURL())
	if code != exitUnreachable {
		t.Fatalf("exit %d, want 3; stderr:\n%s", code, errs)
	}
	if !strings.Contains(errs, "unreachable") {
		t.Fatalf("stderr does not say why:\n%s", errs)
	}
}

// TestBenchLostConnection: when the NATS server goes away mid-run, bench
// says so once, after the figures it has, and exits 3.
func TestBenchLostConnection(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	reg.PushImage(t, "bench/a", "v1", testenv.OCIManifest, "linux/amd64")
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errs := cli(t, "", "bench", reg.Ref("bench/a", "v1"), "--duration", "30s", "--warmup", "0s", "--no-echo", "--nats-url", ns.ClientURL())
		done <- result{code, out, errs}
	}()
	time.Sleep(time.Second)
	ns.Shutdown()
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("bench went on after the NATS server stopped")
	}
	if r.code != exitUnreachable || strings.Count(r.err, "lost the connection") != 1 || strings.Count(r.err, "\n") != 1 {
		t.Fatalf("exit %d, stderr:\n%s\nwant 3 and one line saying the connection was lost", r.code, r.err)
	}
	if !strings.Contains(r.out, "regcap") {
		t.Errorf("no figures before the loss:\n%s", r.out)
	}
}
