package queue_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/queue"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/testenv"
)

// TestMessageBecomesRequest: the subject names the function, the payload
// reaches the resolver byte for byte (judging it is the resolver's job),
// and Regcap-Platform is passed for oci_manifest_config only. Resolve gets
// the Miss that Lookup returned.
func TestMessageBecomesRequest(t *testing.T) {
	res := &stub{}
	f := startFront(t, res)
	payloads := []struct {
		name string
		data []byte
	}{
		{"reference", []byte(`"busybox:latest"`)},
		{"whitespace around", []byte(" \t\"busybox\"\n")},
		{"not JSON", []byte("\x00\xffbusybox")},
		{"empty", nil},
	}
	platforms := []string{"", "linux/arm64/v8", "not a platform"}
	var want []resolve.Request
	for _, fn := range contract.Functions() {
		for _, p := range payloads {
			for _, platform := range platforms {
				h := nats.Header{}
				if platform != "" {
					h.Set(contract.HeaderPlatform, platform)
				}
				if r := f.ask(t, fn, p.data, h); r.Header.Get(contract.HeaderCache) != string(contract.Miss) {
					t.Fatalf("%s %s: reply %v", fn, p.name, r.Header)
				}
				w := resolve.Request{Function: fn, Payload: p.data}
				if fn == contract.OCIManifestConfig {
					w.Platform = platform
				}
				want = append(want, w)
			}
		}
	}
	lookups, resolves := res.asked()
	for name, got := range map[string][]resolve.Request{"Lookup": lookups, "Resolve": resolves} {
		if len(got) != len(want) {
			t.Fatalf("%s asked %d times, want %d", name, len(got), len(want))
		}
		for i := range want {
			if got[i].Function != want[i].Function || !bytes.Equal(got[i].Payload, want[i].Payload) || got[i].Platform != want[i].Platform {
				t.Errorf("%s request %d: got %s %q platform %q, want %s %q platform %q", name, i,
					got[i].Function, got[i].Payload, got[i].Platform, want[i].Function, want[i].Payload, want[i].Platform)
			}
		}
	}
}

// TestSubjectsAndQueueGroup: the front serves the prefix it is given, not
// the default one, and fronts in one queue group take each request once
// between them, while another group gets its own copy.
func TestSubjectsAndQueueGroup(t *testing.T) {
	ns := testenv.StartNATS(t)
	a, b, other := &stub{}, &stub{}, &stub{}
	startFrontOn(t, ns, a, queue.WithSubjectPrefix("fleet"))
	startFrontOn(t, ns, b, queue.WithSubjectPrefix("fleet"))
	f := startFrontOn(t, ns, other, queue.WithSubjectPrefix("fleet"), queue.WithQueueGroup("audit"))
	if got, want := f.srv.Subjects(), []string{"fleet.oci.v1.manifest_digest", "fleet.oci.v1.oci_manifest", "fleet.oci.v1.oci_manifest_config"}; len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("subjects %v, want %v", got, want)
	}
	// Every request gets one reply per group: once all are in, the
	// resolvers' counts are final.
	const n = 30
	inbox, err := f.nc.SubscribeSync(nats.NewInbox())
	testenv.Must(t, err, "reply subscription")
	for range n {
		testenv.Must(t, f.nc.PublishRequest(contract.OCIManifest.Subject("fleet"), inbox.Subject, []byte(`"x"`)), "request on the fleet prefix")
	}
	for i := range 2 * n {
		_, err := inbox.NextMsg(10 * time.Second)
		testenv.Must(t, err, "reply %d of %d", i+1, 2*n)
	}
	if m, err := inbox.NextMsg(100 * time.Millisecond); err == nil {
		t.Errorf("a request was answered more than once per group: %v", m.Header)
	}
	la, _ := a.asked()
	lb, _ := b.asked()
	lo, _ := other.asked()
	if len(la)+len(lb) != n || len(lo) != n {
		t.Errorf("for %d requests the queue group took %d+%d and the other group %d: each group must take each once", n, len(la), len(lb), len(lo))
	}
	if _, err := f.nc.Request(contract.OCIManifest.Subject(contract.DefaultSubjectPrefix), []byte(`"x"`), 10*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("the default prefix: %v, want no responders", err)
	}
}
