package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
)

// FreshTags returns a Options.Fresh that tags the manifests of images
// (round-robin) under new tags in their own repositories, with the
// credentials of the Docker config. Tagging re-uses the manifest, so it
// adds no blobs; each new tag is a cache key no one has asked for, and
// requesting it takes regcap's whole miss path against the registry. It
// needs push access: point it at a local registry, not a public one.
func FreshTags(images []string) func(ctx context.Context, n int) ([]string, error) {
	var (
		mu    sync.Mutex
		descs map[string]*remote.Descriptor
		batch int
	)
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	return func(ctx context.Context, n int) ([]string, error) {
		opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
		mu.Lock()
		defer mu.Unlock()
		if descs == nil {
			descs = map[string]*remote.Descriptor{}
			for _, img := range images {
				ref, err := name.ParseReference(img)
				if err != nil {
					return nil, err
				}
				d, err := remote.Get(ref, opts...)
				if err != nil {
					return nil, fmt.Errorf("reading %s: %w", img, err)
				}
				descs[img] = d
			}
		}
		batch++
		refs := make([]string, n)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(8)
		for i := range n {
			src := images[i%len(images)]
			ref, _ := name.ParseReference(src)
			tag := ref.Context().Tag(fmt.Sprintf("regcap-bench-%s-%d-%d", run, batch, i))
			refs[i] = tag.String()
			g.Go(func() error {
				if err := remote.Tag(tag, descs[src], remote.WithContext(gctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
					return fmt.Errorf("tagging %s: %w", tag, err)
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		return refs, nil
	}
}
