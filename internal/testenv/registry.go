package testenv

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is go-containerregistry's in-process registry behind a handler
// that counts requests by method and kind and can hold or replace them.
type Registry struct {
	// Host is host:port, e.g. 127.0.0.1:41234.
	Host   string
	Server *httptest.Server

	mu        sync.Mutex
	counts    map[string]int
	paths     map[string]int // by "METHOD /path"
	gates     []*Gate
	overrides []override
}

type override struct {
	match func(*http.Request) bool
	h     http.Handler
}

// Gate holds matching requests until released.
type Gate struct {
	match   string
	arrived chan struct{}
	release chan struct{}
	once    sync.Once
}

// Arrived is closed when the first matching request arrives.
func (g *Gate) Arrived() <-chan struct{} { return g.arrived }

// Release lets held and later requests through.
func (g *Gate) Release() { g.once.Do(func() { close(g.release) }) }

// StartRegistry starts the registry on a free loopback port.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{counts: map[string]int{}, paths: map[string]int{}}
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.counts[req.Method+" "+Kind(req.URL.Path)]++
		r.paths[req.Method+" "+req.URL.Path]++
		gates := append([]*Gate(nil), r.gates...)
		ovs := append([]override(nil), r.overrides...)
		r.mu.Unlock()
		for _, g := range gates {
			if strings.Contains(req.URL.Path, g.match) {
				select {
				case <-g.arrived:
				default:
					close(g.arrived)
				}
				select {
				case <-g.release:
				case <-req.Context().Done():
					return
				}
			}
		}
		for _, o := range ovs {
			if o.match(req) {
				o.h.ServeHTTP(w, req)
				return
			}
		}
		inner.ServeHTTP(w, req)
	}))
	r.Host = strings.TrimPrefix(r.Server.URL, "http://")
	t.Cleanup(func() {
		r.mu.Lock()
		for _, g := range r.gates {
			g.Release()
		}
		r.mu.Unlock()
		r.Server.Close()
	})
	return r
}

// Kind names what a registry path is for: ping, manifest, blob, upload,
// tags or other.
func Kind(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "ping"
	case strings.Contains(path, "/blobs/uploads"):
		return "upload"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.Contains(path, "/tags/"):
		return "tags"
	}
	return "other"
}

// Count returns how many requests of method and kind were served, e.g.
// Count("HEAD", "manifest").
func (r *Registry) Count(method, kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[method+" "+kind]
}

// CountManifest returns how many method requests reached the manifest of
// repo:id (id a tag or digest), e.g. CountManifest("HEAD", "app", "v1").
func (r *Registry) CountManifest(method, repo, id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.paths[method+" /v2/"+repo+"/manifests/"+id]
}

// Counts returns a copy of every count, keyed "METHOD kind".
func (r *Registry) Counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := make(map[string]int, len(r.counts))
	for k, v := range r.counts {
		c[k] = v
	}
	return c
}

// ResetCounts zeroes the counts.
func (r *Registry) ResetCounts() {
	r.mu.Lock()
	r.counts = map[string]int{}
	r.paths = map[string]int{}
	r.mu.Unlock()
}

// Hold makes requests whose path contains match wait until the returned
// gate is released (at the latest at cleanup).
func (r *Registry) Hold(match string) *Gate {
	g := &Gate{match: match, arrived: make(chan struct{}), release: make(chan struct{})}
	r.mu.Lock()
	r.gates = append(r.gates, g)
	r.mu.Unlock()
	return g
}

// Override serves requests matching match with h instead of the registry.
func (r *Registry) Override(match func(*http.Request) bool, h http.Handler) {
	r.mu.Lock()
	r.overrides = append(r.overrides, override{match, h})
	r.mu.Unlock()
}

// Ref returns "host/repo:tag" (or "host/repo@digest").
func (r *Registry) Ref(repo, id string) string {
	if strings.HasPrefix(id, "sha256:") {
		return r.Host + "/" + repo + "@" + id
	}
	return r.Host + "/" + repo + ":" + id
}

// Media types used by the fixtures.
const (
	OCIIndex       = string(types.OCIImageIndex)
	OCIManifest    = string(types.OCIManifestSchema1)
	OCIConfig      = string(types.OCIConfigJSON)
	DockerList     = string(types.DockerManifestList)
	DockerManifest = string(types.DockerManifestSchema2)
	DockerConfig   = string(types.DockerConfigJSON)
	OCILayer       = string(types.OCILayer)
	DockerLayer    = string(types.DockerLayer)
)

// Digest is the sha256 digest string of b.
func Digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

type rawManifest struct {
	body []byte
	mt   types.MediaType
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.body, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return m.mt, nil }

// PushBlob uploads b to repo and returns its digest.
func (r *Registry) PushBlob(t testing.TB, repo string, b []byte) string {
	t.Helper()
	ref, err := name.NewRepository(r.Host + "/" + repo)
	Must(t, err, "repository")
	Must(t, remote.WriteLayer(ref, static.NewLayer(b, types.OCILayer)), "pushing blob to %s", repo)
	return Digest(b)
}

// PushManifest puts body, exactly, as repo:tag (tag may be a digest) and
// returns its digest.
func (r *Registry) PushManifest(t testing.TB, repo, tag, mediaType string, body []byte) string {
	t.Helper()
	ref, err := name.ParseReference(r.Ref(repo, tag))
	Must(t, err, "reference")
	Must(t, remote.Put(ref, rawManifest{body, types.MediaType(mediaType)}), "pushing manifest %s", ref)
	return Digest(body)
}

// Image is a pushed image manifest with its config.
type Image struct {
	Manifest, Config []byte
	MediaType        string
	Digest           string
	Platform         string // os/arch[/variant] or "" for none
}

// PushImage pushes a small image manifest of mediaType (OCIManifest or
// DockerManifest) with a config for platform ("os/arch[/variant]"), under
// tag ("" to push by digest only). Configs and layers are unique per call
// so that no two images share a digest.
func (r *Registry) PushImage(t testing.TB, repo, tag, mediaType, platform string) Image {
	t.Helper()
	os, arch, variant := "linux", "amd64", ""
	if platform != "" {
		parts := strings.SplitN(platform, "/", 3)
		os, arch = parts[0], parts[1]
		if len(parts) == 3 {
			variant = parts[2]
		}
	}
	uniq := fmt.Sprintf("%s:%s:%s", repo, tag, platform)
	cfg := map[string]any{
		"architecture": arch, "os": os,
		"config":  map[string]any{"Env": []string{"PATH=/usr/bin", "FIXTURE=" + uniq}, "Cmd": []string{"sh"}},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{Digest([]byte(uniq))}},
		"history": []map[string]any{{"created_by": "testenv " + uniq}},
	}
	if variant != "" {
		cfg["variant"] = variant
	}
	cfgBytes, _ := json.MarshalIndent(cfg, "", "  ")
	layer := []byte("layer of " + uniq)
	cfgMT, layerMT := OCIConfig, OCILayer
	if mediaType == DockerManifest {
		cfgMT, layerMT = DockerConfig, DockerLayer
	}
	r.PushBlob(t, repo, cfgBytes)
	r.PushBlob(t, repo, layer)
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaType,
		"config":        map[string]any{"mediaType": cfgMT, "digest": Digest(cfgBytes), "size": len(cfgBytes)},
		"layers":        []map[string]any{{"mediaType": layerMT, "digest": Digest(layer), "size": len(layer)}},
	}
	// Indented with a trailing newline, as many registries store them, so
	// that byte-for-byte comparisons notice any re-encoding.
	body, _ := json.MarshalIndent(m, "", "   ")
	body = append(body, '\n')
	id := tag
	if id == "" {
		id = Digest(body)
	}
	d := r.PushManifest(t, repo, id, mediaType, body)
	return Image{Manifest: body, Config: cfgBytes, MediaType: mediaType, Digest: d, Platform: platform}
}

// Attestation pushes an in-toto attestation manifest for subject, as
// BuildKit does (platform unknown/unknown in the index).
func (r *Registry) Attestation(t testing.TB, repo, subject string) Image {
	t.Helper()
	cfg := []byte(`{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}`)
	statement := []byte(`{"_type":"https://in-toto.io/Statement/v0.1","subject":[{"digest":{"sha256":"` + strings.TrimPrefix(subject, "sha256:") + `"}}]}`)
	r.PushBlob(t, repo, cfg)
	r.PushBlob(t, repo, statement)
	m := map[string]any{
		"schemaVersion": 2, "mediaType": OCIManifest,
		"config": map[string]any{"mediaType": OCIConfig, "digest": Digest(cfg), "size": len(cfg)},
		"layers": []map[string]any{{"mediaType": "application/vnd.in-toto+json", "digest": Digest(statement), "size": len(statement),
			"annotations": map[string]string{"in-toto.io/predicate-type": "https://spdx.dev/Document"}}},
	}
	body, _ := json.Marshal(m)
	d := r.PushManifest(t, repo, Digest(body), OCIManifest, body)
	return Image{Manifest: body, Config: cfg, MediaType: OCIManifest, Digest: d, Platform: "unknown/unknown"}
}

// Index is a pushed index or manifest list.
type Index struct {
	Body      []byte
	MediaType string
	Digest    string
	Images    []Image // in index order
}

// PushIndex pushes children by digest, then an index of mediaType
// (OCIIndex or DockerList) over them under tag. An Image whose Platform is
// "unknown/unknown" is listed with that platform and a BuildKit
// attestation annotation.
func (r *Registry) PushIndex(t testing.TB, repo, tag, mediaType string, children []Image) Index {
	t.Helper()
	var ms []map[string]any
	for _, c := range children {
		d := map[string]any{"mediaType": c.MediaType, "digest": c.Digest, "size": len(c.Manifest)}
		if c.Platform != "" {
			parts := strings.SplitN(c.Platform, "/", 3)
			p := map[string]string{"os": parts[0], "architecture": parts[1]}
			if len(parts) == 3 {
				p["variant"] = parts[2]
			}
			d["platform"] = p
		}
		if c.Platform == "unknown/unknown" {
			d["annotations"] = map[string]string{"vnd.docker.reference.type": "attestation-manifest"}
		}
		ms = append(ms, d)
	}
	body, _ := json.MarshalIndent(map[string]any{"schemaVersion": 2, "mediaType": mediaType, "manifests": ms}, "", "  ")
	d := r.PushManifest(t, repo, tag, mediaType, body)
	return Index{Body: body, MediaType: mediaType, Digest: d, Images: children}
}

// PushMultiPlatform pushes the canonical fixture: an index of mediaType
// with linux/amd64 and linux/arm64 images of childType and, for OCI, two
// attestation manifests (unknown/unknown) as BuildKit makes them.
func (r *Registry) PushMultiPlatform(t testing.TB, repo, tag, mediaType string) Index {
	t.Helper()
	childType := OCIManifest
	if mediaType == DockerList {
		childType = DockerManifest
	}
	amd := r.PushImage(t, repo, "", childType, "linux/amd64")
	arm := r.PushImage(t, repo, "", childType, "linux/arm64/v8")
	children := []Image{amd, arm}
	if mediaType == OCIIndex {
		children = append(children, r.Attestation(t, repo, amd.Digest), r.Attestation(t, repo, arm.Digest))
	}
	return r.PushIndex(t, repo, tag, mediaType, children)
}

// ConfigReply is the oci_manifest_config reply regcap must give for img.
func ConfigReply(img Image) []byte {
	var b bytes.Buffer
	b.WriteString(`{"manifest":`)
	b.Write(img.Manifest)
	b.WriteString(`,"digest":"` + img.Digest + `","config":`)
	b.Write(img.Config)
	b.WriteString(`}`)
	return b.Bytes()
}
