package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/demo"
)

// fleetOfOne starts what the examples ask: an in-process registry holding
// one image, and a worker on an embedded NATS server, both on loopback. It
// returns the image, a client of the fleet and a function that stops all.
func fleetOfOne() (image string, c *client.Client, stop func()) {
	f, err := demo.Start(context.Background(), zap.NewNop())
	if err != nil {
		log.Fatal(err)
	}
	nc, err := nats.Connect(f.NATSURL)
	if err != nil {
		log.Fatal(err)
	}
	return f.Image, client.New(nc), func() {
		nc.Close()
		f.Close()
	}
}

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
