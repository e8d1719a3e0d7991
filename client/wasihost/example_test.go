package wasihost_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/client/wasihost"
	"github.com/regcap/regcap/internal/demo"
)

// A Go program runs a Kubewarden WASI policy in wazero, with the policy's
// kubewarden/oci host calls answered by a regcap fleet. The fleet here is
// an in-process registry and worker on loopback; the policy is
// testdata/guest, built with GOOS=wasip1 GOARCH=wasm go build. It asks for
// an image's digest, then for a DNS lookup no handler answers.
func Example() {
	ctx := context.Background()
	f, err := demo.Start(ctx, zap.NewNop())
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	nc, err := nats.Connect(f.NATSURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc)

	dir, err := os.MkdirTemp("", "wasihost-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	wasm, err := guestWasm(dir) // a policy.wasm, as read from disk
	if err != nil {
		log.Fatal(err)
	}

	// One Host for the program, one compilation per policy, one
	// instance per evaluation.
	h, err := wasihost.New(ctx, c.HostCall)
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close(ctx)
	policy, err := h.Compile(ctx, "guest.wasm", wasm)
	if err != nil {
		log.Fatal(err)
	}

	input := `{"calls":[
		{"binding":"kubewarden","namespace":"oci","operation":"v1/manifest_digest","payload":"\"` + f.Image + `\""},
		{"binding":"kubewarden","namespace":"net","operation":"v1/dns_lookup_host","payload":"\"example.com\""}]}`
	out, err := policy.Validate(ctx, []byte(input))
	if err != nil {
		log.Fatal(err)
	}
	var resp struct {
		Accepted bool
		Calls    []struct {
			Status int
			Answer string
		}
	}
	if err := json.Unmarshal(out, &resp); err != nil {
		log.Fatal(err)
	}
	fmt.Println("accepted:", resp.Accepted)
	for _, call := range resp.Calls {
		if strings.HasPrefix(call.Answer, `{"digest":"sha256:`) {
			call.Answer = `{"digest":"sha256:…"}` // the digest differs from run to run
		}
		fmt.Println(call.Status, call.Answer)
	}
	// Output:
	// accepted: true
	// 0 {"digest":"sha256:…"}
	// 1 wasihost: no handler for host call kubewarden/net/v1/dns_lookup_host
}
