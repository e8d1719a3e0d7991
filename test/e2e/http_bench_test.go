package e2e

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// BenchmarkHTTPHit measures a cached digest through the whole worker over
// HTTPS (TLS 1.3, keep-alive clients, the real resolver's memory tier),
// next to a plain Go HTTPS handler that answers the same bytes with the
// same certificate: the floor. The front's own cost, without TLS or a
// resolver, is internal/httpfront's BenchmarkPlain. Compare the two in
// one run:
//
//	go test -run '^$' -bench HTTPHit -benchtime 3s ./test/e2e/
func BenchmarkHTTPHit(b *testing.B) {
	a := startHTTPAPI(b, worker.Config{})
	img := a.reg.PushImage(b, "bench/app", "v1", testenv.OCIManifest, "linux/amd64")
	url := a.url + "/v1/manifest_digest?image=" + a.reg.Ref("bench/app", "v1")
	reply := []byte(`{"digest":"` + img.Digest + `"}`)
	pair, err := tls.LoadX509KeyPair(filepath.Join(a.dir, "tls.crt"), filepath.Join(a.dir, "tls.key"))
	testenv.Must(b, err, "pair")
	echo := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(reply)
	}))
	echo.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13}
	echo.StartTLS()
	b.Cleanup(echo.Close)
	if code, _, _ := httpGet(b, a.client, url); code != 200 {
		b.Fatalf("warm-up: %d", code)
	}
	for _, conc := range []int{1, 32} {
		for _, target := range []struct{ name, url string }{{"echo", echo.URL + "/"}, {"regcap", url}} {
			b.Run(fmt.Sprintf("%s/c=%d", target.name, conc), func(b *testing.B) {
				c := a.client
				c.Transport.(*http.Transport).MaxIdleConnsPerHost = conc
				work := make(chan struct{}, b.N)
				for range b.N {
					work <- struct{}{}
				}
				close(work)
				b.ResetTimer()
				var wg sync.WaitGroup
				for range conc {
					wg.Go(func() {
						for range work {
							resp, err := c.Get(target.url)
							if err != nil {
								b.Error(err)
								return
							}
							_, _ = io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			})
		}
	}
}

// BenchmarkHTTPGatekeeperBatch times one ProviderRequest of 100 keys
// through the whole worker: all hits, and all misses (100 tags never
// asked for, fetched from the local registry through the resolver's
// fetch slots). The front's own cost per batch is internal/httpfront's
// BenchmarkGatekeeper.
//
//	go test -run '^$' -bench HTTPGatekeeperBatch -benchtime 20x ./test/e2e/
func BenchmarkHTTPGatekeeperBatch(b *testing.B) {
	a := startHTTPAPI(b, worker.Config{})
	img := a.reg.PushImage(b, "batch/app", "base", testenv.OCIManifest, "linux/amd64")
	tags := func(prefix string) []string {
		var ks []string
		for i := range 100 {
			tag := fmt.Sprintf("%s-%d", prefix, i)
			a.reg.PushManifest(b, "batch/app", tag, testenv.OCIManifest, img.Manifest)
			ks = append(ks, a.reg.Ref("batch/app", tag))
		}
		return ks
	}
	post := func(ks []string) {
		resp, err := a.client.Post(a.url+"/gatekeeper/v1/manifest_digest", "application/json", strings.NewReader(gkKeys(ks...)))
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), `"error"`) {
			b.Fatalf("item errors: %.300s", body)
		}
	}
	b.Run("100-hits", func(b *testing.B) {
		ks := tags("hit")
		post(ks)
		b.ResetTimer()
		for b.Loop() {
			post(ks)
		}
	})
	b.Run("100-misses", func(b *testing.B) {
		n := 0
		for b.Loop() {
			b.StopTimer()
			n++
			ks := tags(fmt.Sprintf("miss%d", n))
			b.StartTimer()
			post(ks)
		}
	})
}
