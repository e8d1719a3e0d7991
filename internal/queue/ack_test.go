package queue_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/resolve"
	"github.com/regcap/regcap/internal/testenv"
)

// TestAckOnMissWhenAsked: a request that names an acknowledgement
// subject and misses gets an empty message there before its answer is
// resolved; its answer on the reply subject is unchanged. A hit is
// answered at once and gets no acknowledgement.
func TestAckOnMissWhenAsked(t *testing.T) {
	body := []byte(`{"digest":"sha256:1185d7481dc2a1da487eefd4c529368571aa64c70c8c43a4ca5e474f25b2b37c"}`)
	for _, c := range []struct{ via, form string }{{"miss", "header"}, {"miss", "reply token"}, {"hit", "header"}, {"hit", "reply token"}} {
		via := c.via
		t.Run(c.via+", "+c.form, func(t *testing.T) {
			gate := newLatch()
			res := &stub{resolve: func(context.Context, *resolve.Miss) (resolve.Answer, error) {
				<-gate.ch
				return resolve.Answer{Body: body, Outcome: contract.Miss}, nil
			}}
			if via == "hit" {
				gate.open()
				res.lookup = hit(resolve.Answer{Body: body, Outcome: contract.Hit})
			}
			f := startFront(t, res)
			openAtEnd(t, gate)
			inbox := nats.NewInbox()
			sub, err := f.nc.SubscribeSync(inbox + ".>")
			testenv.Must(t, err, "subscribing")
			m := nats.NewMsg(contract.ManifestDigest.Subject(contract.DefaultSubjectPrefix))
			reply := inbox + ".r"
			if c.form == "header" {
				m.Header.Set(contract.HeaderAck, reply+contract.AckSuffix)
			} else {
				reply += "." + contract.AckReplyToken
			}
			m.Data, m.Reply = []byte(`"busybox"`), reply
			testenv.Must(t, f.nc.PublishMsg(m), "publishing")
			if via == "miss" {
				// The answer is held until the test opens the gate: the
				// acknowledgement must come before it.
				a, err := sub.NextMsg(5 * time.Second)
				testenv.Must(t, err, "waiting for the acknowledgement")
				if a.Subject != reply+contract.AckSuffix || len(a.Data) != 0 || len(a.Header) != 0 {
					t.Fatalf("first message on %s, body %q, headers %v: want an empty acknowledgement on %s", a.Subject, a.Data, a.Header, reply+contract.AckSuffix)
				}
				gate.open()
			}
			r, err := sub.NextMsg(5 * time.Second)
			testenv.Must(t, err, "waiting for the answer")
			if r.Subject != reply || string(r.Data) != string(body) {
				t.Fatalf("answer on %s: %q", r.Subject, r.Data)
			}
			wantHeaders(t, r.Header, map[string]string{contract.HeaderCache: via})
			if extra, err := sub.NextMsg(200 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
				t.Errorf("a message after the answer: %v, %v", extra, err)
			}
		})
	}
}

// TestNoAckUnlessAsked: a request without the header or the reply token
// (nats req, policy-sdk-go, any plain request-reply client), or one
// naming a subject no publish may name, gets exactly today's one
// message: the answer, byte for byte.
func TestNoAckUnlessAsked(t *testing.T) {
	body := []byte(`{"digest":"sha256:1185d7481dc2a1da487eefd4c529368571aa64c70c8c43a4ca5e474f25b2b37c"}`)
	res := &stub{resolve: func(context.Context, *resolve.Miss) (resolve.Answer, error) {
		return resolve.Answer{Body: body, Outcome: contract.Miss}, nil
	}}
	f := startFront(t, res)
	// The caller listens on everything: an acknowledgement sent anywhere
	// is seen.
	all, err := f.nc.SubscribeSync(">")
	testenv.Must(t, err, "subscribing to >")
	testenv.Must(t, f.nc.Flush(), "flush")
	for _, ack := range []string{"", "x.*", "x.>", ">", "*", "x..y", ".x", "x.", "x y", "x\ty", strings.Repeat("a", 257),
		// Valid subjects, but not the reply subject's acknowledgement:
		// another service's, or the request subject itself.
		"other.service.subject", contract.ManifestDigest.Subject(contract.DefaultSubjectPrefix),
		// No header, and reply subjects that end almost like the token
		// that asks (after "reply:").
		"reply:x" + contract.AckReplyToken, "reply:" + contract.AckReplyToken + "x", "reply:" + contract.AckReplyToken + ".x",
		"reply:" + strings.ToUpper(contract.AckReplyToken)} {
		t.Run(ack, func(t *testing.T) {
			inbox := nats.NewInbox()
			m := nats.NewMsg(contract.ManifestDigest.Subject(contract.DefaultSubjectPrefix))
			m.Data, m.Reply = []byte(`"busybox"`), inbox
			if suffix, ok := strings.CutPrefix(ack, "reply:"); ok {
				m.Reply, ack = inbox+"."+suffix, ""
			}
			if ack != "" {
				m.Header.Set(contract.HeaderAck, ack)
			}
			testenv.Must(t, f.nc.PublishMsg(m), "publishing")
			var got []*nats.Msg
			for {
				r, err := all.NextMsg(300 * time.Millisecond)
				if err != nil {
					break
				}
				if r.Subject != m.Subject {
					got = append(got, r)
				}
			}
			if len(got) != 1 {
				subjects := make([]string, len(got))
				for i, r := range got {
					subjects[i] = r.Subject
				}
				t.Fatalf("%d messages besides the request (%q), want only the answer", len(got), subjects)
			}
			if r := got[0]; r.Subject != m.Reply || string(r.Data) != string(body) {
				t.Fatalf("answer on %s: %q", r.Subject, r.Data)
			}
			wantHeaders(t, got[0].Header, map[string]string{contract.HeaderCache: "miss"})
		})
	}
}
