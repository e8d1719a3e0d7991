package queue_test

import (
	"testing"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestPublishWithoutReplyIgnored: a message without a reply subject has
// nobody to answer: the resolver is never asked (no fetch for nobody), the
// observer is told nothing, and the front goes on serving.
func TestPublishWithoutReplyIgnored(t *testing.T) {
	res := &stub{}
	f := startFront(t, res)
	for _, fn := range contract.Functions() {
		testenv.Must(t, f.nc.Publish(fn.Subject(contract.DefaultSubjectPrefix), []byte(`"busybox"`)), "publish")
	}
	testenv.Must(t, f.nc.Flush(), "flush")
	// Messages of one subscription are handled in order: once a request
	// sent after them is answered, they have been handled.
	for _, fn := range contract.Functions() {
		if r := f.ask(t, fn, []byte(`"after"`), nil); r.Header.Get(contract.HeaderCache) != string(contract.Miss) {
			t.Fatalf("%s after a publish: %v", fn, r.Header)
		}
	}
	lookups, resolves := res.asked()
	if len(lookups) != 3 || len(resolves) != 3 {
		t.Fatalf("resolver asked %d Lookups and %d Resolves, want 3 each: the requests, not the publishes", len(lookups), len(resolves))
	}
	for _, r := range lookups {
		if string(r.Payload) != `"after"` {
			t.Errorf("a publish reached the resolver: %s %s", r.Function, r.Payload)
		}
	}
	f.obs.wait(t, 3)
	if got := f.obs.all(); len(got) != 3 {
		t.Errorf("observer told %d requests, want 3: %v", len(got), got)
	}
}
