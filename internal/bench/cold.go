package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// Fresh makes the new tags of a cold run, and deletes them afterwards.
type Fresh struct {
	images []string
	run    string

	mu     sync.Mutex
	descs  map[string]taggable
	batch  int
	pushed []name.Tag
	copies []name.Digest // the run's own manifests, one per image
}

// taggable is a manifest to tag, as remote.Tag takes it.
type taggable interface {
	RawManifest() ([]byte, error)
	MediaType() (types.MediaType, error)
}

// rawManifest is a manifest's bytes and media type.
type rawManifest struct {
	body []byte
	mt   types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.body, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

// runCopy pushes, by digest, a copy of d's manifest that differs by an
// annotation naming the run, and returns it: the run's tags point at it,
// not at the image's own manifest, so that a registry that cannot delete
// a tag (CNCF distribution) can delete the run's manifest, and every tag
// of the run with it, without touching the image. Blobs are shared.
func (f *Fresh) runCopy(ctx context.Context, ref name.Reference, d *remote.Descriptor) (taggable, error) {
	var m map[string]any
	if err := json.Unmarshal(d.Manifest, &m); err != nil {
		return nil, fmt.Errorf("reading %s: manifest is not a JSON object: %w", ref, err)
	}
	ann, _ := m["annotations"].(map[string]any)
	if ann == nil {
		ann = map[string]any{}
	}
	ann["org.regcap.bench.run"] = f.run
	m["annotations"] = ann
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	h, _, err := v1.SHA256(bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	dig := ref.Context().Digest(h.String())
	cp := rawManifest{body: body, mt: d.MediaType}
	if err := remote.Put(dig, cp, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return nil, fmt.Errorf("pushing the run's copy of %s: %w", ref, err)
	}
	f.copies = append(f.copies, dig)
	return cp, nil
}

// FreshTags returns a Fresh whose Tags (an Options.Fresh) tags the
// manifests of images (round-robin) under new tags in their own
// repositories, with the credentials of the Docker config. Tagging re-uses
// the manifest, so it adds no blobs; each new tag is a cache key no one
// has asked for, and requesting it takes regcap's whole miss path against
// the registry. It needs push access: point it at a local registry, not a
// public one. Cleanup deletes the tags it pushed.
func FreshTags(images []string) *Fresh {
	return &Fresh{images: images, run: strconv.FormatInt(time.Now().UnixNano(), 36)}
}

// Tags pushes n new tags and returns their references.
func (f *Fresh) Tags(ctx context.Context, n int) ([]string, error) {
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.descs == nil {
		descs := map[string]taggable{}
		for _, img := range f.images {
			ref, err := name.ParseReference(img)
			if err != nil {
				return nil, err
			}
			d, err := remote.Get(ref, opts...)
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", img, err)
			}
			if descs[img], err = f.runCopy(ctx, ref, d); err != nil {
				return nil, err
			}
		}
		f.descs = descs
	}
	f.batch++
	refs := make([]string, n)
	tags := make([]name.Tag, n)
	ok := make([]bool, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range n {
		src := f.images[i%len(f.images)]
		ref, _ := name.ParseReference(src)
		tag := ref.Context().Tag(fmt.Sprintf("regcap-bench-%s-%d-%d", f.run, f.batch, i))
		refs[i], tags[i] = tag.String(), tag
		g.Go(func() error {
			if err := remote.Tag(tag, f.descs[src], remote.WithContext(gctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
				return fmt.Errorf("tagging %s: %w", tag, err)
			}
			ok[i] = true
			return nil
		})
	}
	err := g.Wait()
	// Every tag pushed is remembered for Cleanup, even when others failed.
	for i, t := range tags {
		if ok[i] {
			f.pushed = append(f.pushed, t)
		}
	}
	if err != nil {
		return nil, err
	}
	return refs, nil
}

// Pushed is how many tags Tags has pushed and Cleanup not deleted.
func (f *Fresh) Pushed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pushed)
}

// Cleanup deletes the tags pushed, by tag: never by digest, which would
// delete the manifest the images' own tags point at. It returns how many
// it deleted; those it could not delete (a registry that does not delete
// tags answers 405 or UNSUPPORTED) stay listed for a later call, and the
// error names the first failure.
func (f *Fresh) Cleanup(ctx context.Context) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var (
		mu       sync.Mutex
		left     []name.Tag
		firstErr error
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, t := range f.pushed {
		g.Go(func() error {
			err := remote.Delete(t, remote.WithContext(gctx), remote.WithAuthFromKeychain(authn.DefaultKeychain))
			if err != nil {
				mu.Lock()
				left = append(left, t)
				if firstErr == nil {
					firstErr = fmt.Errorf("deleting %s: %w", t, err)
				}
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait()
	if len(left) > 0 && ctx.Err() == nil {
		// A registry that cannot delete a tag (CNCF distribution answers
		// DIGEST_INVALID or UNSUPPORTED): delete the run's own manifests,
		// which only the run's tags point at, and every such tag with them.
		if err := f.deleteCopies(ctx); err == nil {
			left, firstErr = nil, nil
		} else {
			firstErr = fmt.Errorf("%w; deleting the run's manifests instead: %w", firstErr, err)
		}
	}
	deleted := len(f.pushed) - len(left)
	f.pushed = left
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if len(left) > 0 && firstErr == nil {
		firstErr = errors.New("some tags were not deleted")
	}
	return deleted, firstErr
}

// deleteCopies deletes the run's manifests by digest.
func (f *Fresh) deleteCopies(ctx context.Context) error {
	for len(f.copies) > 0 {
		if err := remote.Delete(f.copies[0], remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("deleting %s: %w", f.copies[0], err)
		}
		f.copies = f.copies[1:]
	}
	return nil
}
