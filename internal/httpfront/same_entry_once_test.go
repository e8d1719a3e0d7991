package httpfront_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/httpfront"
)

// TestGatekeeperSameEntry: keys that name one cache entry, however they
// spell it, are resolved once; each keeps its own item, in order, and
// pin rewrites each as written.
func TestGatekeeperSameEntry(t *testing.T) {
	const d = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	res := newStub().
		answer("index.docker.io/library/busybox:latest", digestBody, contract.Miss).
		same("index.docker.io/library/busybox:latest", "busybox", "busybox:latest", "docker.io/library/busybox:latest").
		answer("reg/app@"+d, digestBody, contract.Miss)
	var mu sync.Mutex
	var seen []contract.Outcome
	obs := observerFunc(func(_ contract.Function, code int, o contract.Outcome, _ time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if code == 0 {
			seen = append(seen, o)
		}
	})
	_, srv := start(t, res, httpfront.WithObserver(obs))
	ks := []string{"busybox", "reg/app:1@" + d, "docker.io/library/busybox:latest", "reg/app:2@" + d, "busybox:latest", "reg/app@" + d}
	items := gk(t, srv.URL, "pin", keys(ks...), nil).items(t)
	pinnedBusybox := `"busybox@sha256:1185d7481dc2a1da487eefd4c529368571aa64c70c8c43a4ca5e474f25b2b37c"`
	want := []string{pinnedBusybox, `"reg/app:1@` + d + `"`, `"docker.io/library/busybox@sha256:1185d7481dc2a1da487eefd4c529368571aa64c70c8c43a4ca5e474f25b2b37c"`,
		`"reg/app:2@` + d + `"`, pinnedBusybox, `"reg/app@` + d + `"`}
	if len(items) != len(ks) {
		t.Fatalf("%d items for %d keys", len(items), len(ks))
	}
	for i, it := range items {
		if it.Key != ks[i] || string(it.Value) != want[i] {
			t.Errorf("item %d: %+v, want key %s value %s", i, it, ks[i], want[i])
		}
	}
	for _, k := range []string{"manifest_digest:index.docker.io/library/busybox:latest", "manifest_digest:reg/app@" + d} {
		if n := res.resolutions(k); n != 1 {
			t.Errorf("%s resolved %d times, want once", k, n)
		}
	}
	// Metrics count every key: the first of an entry fetched it, the others shared it.
	mu.Lock()
	defer mu.Unlock()
	if got := fmt.Sprint(seen); got != "[miss miss shared shared shared shared]" {
		t.Errorf("outcomes observed %s", got)
	}
}
