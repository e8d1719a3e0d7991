package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/nats-io/nats.go"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/worker"
)

// fleetOfOne starts what the examples ask: an in-process registry holding
// one image, and a worker on an embedded NATS server, both on loopback. It
// returns the image, a client of the fleet and a function that stops all.
func fleetOfOne() (image string, c *client.Client, stop func()) {
	reg := httptest.NewServer(ggcr.New(ggcr.Logger(log.New(discard{}, "", 0))))
	image = strings.TrimPrefix(reg.URL, "http://") + "/demo/app:v1"
	ref, err := name.ParseReference(image)
	if err != nil {
		log.Fatal(err)
	}
	img, err := random.Image(256, 1)
	if err != nil {
		log.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(context.Background(), worker.Config{EmbeddedNATSAddr: "127.0.0.1:-1", MemorySize: 1 << 20})
	if err != nil {
		log.Fatal(err)
	}
	nc, err := nats.Connect(w.NATSURL())
	if err != nil {
		log.Fatal(err)
	}
	return image, client.New(nc), func() {
		nc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = w.Shutdown(ctx)
		reg.Close()
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// A policy host asks the fleet for an image's digest. The first answer is
// fetched from the registry; the next comes from the fleet's cache.
func ExampleClient_Image() {
	image, c, stop := fleetOfOne()
	defer stop()

	for range 2 {
		r, err := c.Image(context.Background(), contract.ManifestDigest, image)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(r.Cache, strings.HasPrefix(string(r.Body), `{"digest":"sha256:`))
	}
	// Output:
	// miss true
	// hit true
}

// An error answer is a *contract.Error carrying the contract's code.
func ExampleClient_Digest_notFound() {
	image, c, stop := fleetOfOne()
	defer stop()

	_, err := c.Digest(context.Background(), strings.Replace(image, ":v1", ":absent", 1))
	var ce *contract.Error
	if errors.As(err, &ce) {
		fmt.Println(ce.Code)
	}
	// Output: 404
}

// HostCall has wapc-go's host-call signature: a Go policy host forwards
// every kubewarden/oci call to the fleet unchanged, and refuses the rest.
func ExampleClient_HostCall() {
	image, c, stop := fleetOfOne()
	defer stop()

	body, err := c.HostCall(context.Background(), "kubewarden", "oci", "v1/oci_manifest", []byte(`"`+image+`"`))
	fmt.Println(err == nil, strings.Contains(string(body), `"schemaVersion":2`))
	_, err = c.HostCall(context.Background(), "kubewarden", "net", "v1/dns_lookup_host", []byte(`"example.com"`))
	fmt.Println(err)
	// Output:
	// true true
	// regcap: unsupported host call kubewarden/net/v1/dns_lookup_host
}
