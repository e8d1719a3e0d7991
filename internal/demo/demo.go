// Package demo runs regcap end to end on one machine, offline: an
// in-process registry holding a small two-platform image, a worker with
// its embedded NATS server and in-process cache, and the three
// capabilities asked twice each through the Go client, first a miss,
// then a hit. Nothing is left running when it returns.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/worker"
)

// Fleet is a fleet of one on loopback: an in-process registry holding a
// sample image, and a worker with its embedded NATS server and in-process
// cache. Close stops both.
type Fleet struct {
	// Image is the sample: an index for linux/amd64 and linux/arm64.
	Image string
	// NATSURL is the worker's embedded NATS server.
	NATSURL string
	// Registry is the registry's host:port.
	Registry string

	reg *httptest.Server
	w   *worker.Worker
}

// Start starts a Fleet; the worker logs to log.
func Start(ctx context.Context, log *zap.Logger) (*Fleet, error) {
	reg := httptest.NewServer(ggcr.New(ggcr.Logger(discardLog())))
	f := &Fleet{reg: reg, Registry: strings.TrimPrefix(reg.URL, "http://")}
	f.Image = f.Registry + "/demo/hello:v1"
	if err := pushSample(f.Image); err != nil {
		reg.Close()
		return nil, fmt.Errorf("pushing the sample image: %w", err)
	}
	w, err := worker.New(ctx, worker.Config{EmbeddedNATSAddr: "127.0.0.1:-1", MemorySize: 1 << 20, Version: "demo", Logger: log})
	if err != nil {
		reg.Close()
		return nil, err
	}
	f.w, f.NATSURL = w, w.NATSURL()
	return f, nil
}

// Close stops the worker, then the registry.
func (f *Fleet) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = f.w.Shutdown(ctx)
	f.reg.Close()
}

// Run runs the demo, writing what it does to out, until it is done or ctx
// ends. With keep, it then serves until ctx ends, so that the requester
// can be tried against the same worker.
func Run(ctx context.Context, out io.Writer, log *zap.Logger, keep bool) error {
	f, err := Start(ctx, log)
	if err != nil {
		return err
	}
	defer f.Close()
	image := f.Image
	fmt.Fprintf(out, "registry   in-process, at %s (plain HTTP on loopback)\n", f.Registry)
	fmt.Fprintf(out, "image      %s: an index for linux/amd64 and linux/arm64\n", image)
	fmt.Fprintf(out, "worker     embedded NATS at %s, in-process cache\n\n", f.NATSURL)

	nc, err := nats.Connect(f.NATSURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	c := client.New(nc)
	for _, fn := range contract.Functions() {
		for range 2 {
			start := time.Now()
			r, err := c.Image(ctx, fn, image, client.WithPlatform("linux/arm64"))
			if err != nil {
				return fmt.Errorf("%s: %w", fn, err)
			}
			fmt.Fprintf(out, "%-22s %-5s %7s  %s\n", fn.Name(), r.Cache, time.Since(start).Round(10*time.Microsecond), summary(fn, r.Body))
		}
	}
	if !keep {
		return nil
	}
	fmt.Fprintf(out, "\nserving until interrupted; in another shell:\n  requester digest %s --nats-url %s\n", image, f.NATSURL)
	<-ctx.Done()
	return nil
}

// pushSample pushes a small index of two random images to ref.
func pushSample(ref string) error {
	idx := mutate.IndexMediaType(empty.Index, "application/vnd.oci.image.index.v1+json")
	for _, p := range []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}} {
		img, err := random.Image(512, 1)
		if err != nil {
			return err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return err
		}
		cf.OS, cf.Architecture = p.OS, p.Architecture
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			return err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	return remote.WriteIndex(r, idx)
}

// summary shortens a reply body for one line.
func summary(fn contract.Function, body []byte) string {
	switch fn {
	case contract.ManifestDigest:
		return string(body)
	case contract.OCIManifestConfig:
		var r struct {
			Digest string          `json:"digest"`
			Config json.RawMessage `json:"config"`
		}
		var cfg struct{ OS, Architecture string }
		_ = json.Unmarshal(body, &r)
		_ = json.Unmarshal(r.Config, &cfg)
		return fmt.Sprintf("image manifest %s, config for %s/%s (%d bytes)", short(r.Digest), cfg.OS, cfg.Architecture, len(body))
	default:
		var m struct {
			MediaType string `json:"mediaType"`
		}
		_ = json.Unmarshal(body, &m)
		return fmt.Sprintf("%s (%d bytes)", m.MediaType, len(body))
	}
}

func short(d string) string {
	if len(d) > 19 {
		return d[:19] + "…"
	}
	return d
}

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }
