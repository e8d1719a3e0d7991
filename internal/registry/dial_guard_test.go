package registry_test

import (
	"testing"

	"github.com/regcap/regcap/internal/testenv"
)

// A name resolving to a denied address, and the address itself, are
// refused at dial time: 403, and the address sees no connection. The
// denied address is loopback (127.0.0.5), never a real metadata address:
// a broken guard would really connect.
func TestGuardDeniesResolvedAddress(t *testing.T) {
	cl := testenv.ListenCounting(t, "127.0.0.5:0")
	port := cl.Port()
	p := newPuller(t, pullerSetup{
		deny:    []string{"127.0.0.5/32"},
		sources: "insecure_sources:\n  - denied.regcap.test:" + port + "\n",
	})
	wantError(t, p, "denied.regcap.test:"+port+"/x/y:z", 403, "refused by policy", "127.0.0.5", "--deny-cidrs")
	wantError(t, p, "127.0.0.5:"+port+"/x/y:z", 403, "refused by policy")
	if n := cl.CountBefore(t); n != 0 {
		t.Fatalf("denied address saw %d connections, want 0", n)
	}
}
