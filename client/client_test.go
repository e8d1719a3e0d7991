package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testworker"

	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

func TestClientCalls(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	c := testenv.Client(t, ns.ClientURL())
	idx := reg.PushMultiPlatform(t, "app", "v1", testenv.OCIIndex)
	image := reg.Ref("app", "v1")
	ctx := context.Background()

	d, err := c.Digest(ctx, image)
	if err != nil || d != idx.Digest {
		t.Fatalf("Digest: %s, %v", d, err)
	}
	m, err := c.Manifest(ctx, image)
	if err != nil || !bytes.Equal(m, idx.Body) {
		t.Fatalf("Manifest: %v", err)
	}
	cfg, err := c.ManifestConfig(ctx, image, "linux/arm64")
	if err != nil || !bytes.Equal(cfg, testenv.ConfigReply(idx.Images[1])) {
		t.Fatalf("ManifestConfig: %s, %v", cfg, err)
	}

	_, err = c.Digest(ctx, reg.Ref("app", "missing"))
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 404 {
		t.Fatalf("missing tag: %v", err)
	}
}

// TestHostCall plugs the client in as a wapc-go host-call function: the
// payload is the waPC payload unchanged, and the answer is what
// Kubewarden's host would return.
func TestHostCall(t *testing.T) {
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL()})
	c := testenv.Client(t, ns.ClientURL())
	img := reg.PushImage(t, "app", "v1", testenv.OCIManifest, "linux/amd64")
	payload, _ := json.Marshal(reg.Ref("app", "v1"))

	var hostCall func(context.Context, string, string, string, []byte) ([]byte, error) = c.HostCall

	cases := []struct {
		op   string
		want []byte
	}{
		{"v1/manifest_digest", []byte(`{"digest":"` + img.Digest + `"}`)},
		{"v1/oci_manifest", img.Manifest},
		{"v1/oci_manifest_config", testenv.ConfigReply(img)},
	}
	for _, tc := range cases {
		got, err := hostCall(context.Background(), "kubewarden", "oci", tc.op, payload)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: %s, %v", tc.op, got, err)
		}
	}
	for _, bad := range [][3]string{{"kubewarden", "oci", "v2/manifest_digest"}, {"kubewarden", "net", "v1/dns_lookup_host"}, {"other", "oci", "v1/oci_manifest"}} {
		if _, err := hostCall(context.Background(), bad[0], bad[1], bad[2], payload); err == nil {
			t.Errorf("%v was forwarded", bad)
		}
	}
	// Bad payloads come back as the fleet's 400.
	_, err := hostCall(context.Background(), "kubewarden", "oci", "v1/oci_manifest", []byte(`not json`))
	var ce *contract.Error
	if !errors.As(err, &ce) || ce.Code != 400 {
		t.Errorf("bad payload: %v", err)
	}
}

func TestUnreachable(t *testing.T) {
	ns := testenv.StartNATS(t)
	c := client.New(testenv.Connect(t, ns.ClientURL()), client.WithTimeout(time.Second))
	_, err := c.Digest(context.Background(), "busybox")
	if !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("no worker: want ErrUnreachable, got %v", err)
	}
	// A subscriber that never answers: a timeout, also unreachable.
	nc := testenv.Connect(t, ns.ClientURL())
	_, err = nc.Subscribe(contract.ManifestDigest.Subject("kubewarden"), func(*natsMsg) {})
	testenv.Must(t, err, "subscribe")
	testenv.Must(t, nc.Flush(), "flush")
	_, err = c.Digest(context.Background(), "busybox")
	if !errors.Is(err, client.ErrUnreachable) {
		t.Fatalf("silent worker: want ErrUnreachable, got %v", err)
	}
}

type natsMsg = nats.Msg
