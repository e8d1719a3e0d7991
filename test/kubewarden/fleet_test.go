package kubewarden

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/tetratelabs/wazero"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/client/wasihost"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// workerPlatform is the platform the fleet resolves indexes to for
// manifest_config: not the default, so that a host or worker resolving
// to its own platform would give another decision.
var workerPlatform = v1.Platform{OS: "linux", Architecture: "arm64"}

var (
	policyOnce sync.Once
	policyWasm []byte
	policyErr  error
	// compiled shares the policy's compiled code between the tests'
	// Hosts: compiling a Go policy takes seconds.
	compiled = wazero.NewCompilationCache()
)

// policy builds ./policy with GOOS=wasip1 GOARCH=wasm, as a Kubewarden
// policy author does, once per test binary.
func policy(t testing.TB) []byte {
	t.Helper()
	policyOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kubewarden-policy")
		if err != nil {
			policyErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "policy.wasm")
		cmd := exec.Command("go", "build", "-o", out, "./policy")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			policyErr = fmt.Errorf("building the policy: %v\n%s", err, b)
			return
		}
		policyWasm, policyErr = os.ReadFile(out)
	})
	if policyErr != nil {
		t.Fatal(policyErr)
	}
	return policyWasm
}

// policyFile writes the policy to a file for `requester run`.
func policyFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "policy.wasm")
	testenv.Must(t, os.WriteFile(p, policy(t), 0o600), "writing the policy")
	return p
}

// fleet is a regcap fleet (NATS, Redis, two workers sharing it) and the
// registries it reads: a public one and a private one behind token auth.
type fleet struct {
	NATSURL string
	Reg     *testenv.Registry
	Private *testenv.TokenRegistry
	Workers []*testworker.Worker
}

// startFleet starts a fleet of two workers with cfg (its NATS, Redis,
// platform and Docker config set here).
func startFleet(t testing.TB, cfg worker.Config) *fleet {
	t.Helper()
	testenv.QuietRedisLogs()
	ns := testenv.StartNATS(t)
	rd := testenv.StartRedis(t)
	f := &fleet{NATSURL: ns.ClientURL(), Reg: testenv.StartRegistry(t), Private: testenv.StartTokenRegistry(t)}
	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(testenv.TokenUser + ":" + testenv.TokenPass))
	dockerConfig := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, f.Private.Host, auth)
	testenv.Must(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(dockerConfig), 0o600), "writing the Docker config")
	cfg.Platform = workerPlatform
	cfg.DockerConfig = dir
	for range 2 {
		f.Workers = append(f.Workers, testworker.Start(t, testworker.Config{NATSURL: f.NATSURL, RedisAddr: rd.Addr(), Config: cfg}))
	}
	return f
}

// host is a wasihost.Host whose kubewarden/oci calls go to the fleet
// over a connection of its own, as one policy server's would.
func (f *fleet) host(t testing.TB) *wasihost.Host {
	t.Helper()
	c := client.New(testenv.Connect(t, f.NATSURL), client.WithTimeout(30*time.Second))
	return newHost(t, c.HostCall)
}

func newHost(t testing.TB, oci wasihost.HostCallFunc) *wasihost.Host {
	t.Helper()
	h, err := wasihost.New(context.Background(), oci, wasihost.WithCompilationCache(compiled))
	testenv.Must(t, err, "starting a wasihost")
	t.Cleanup(func() { _ = h.Close(context.Background()) })
	return h
}

// compile compiles the policy in h, or wasm when given.
func compile(t testing.TB, h *wasihost.Host, wasm ...[]byte) *wasihost.Policy {
	t.Helper()
	code := policy(t)
	if len(wasm) > 0 {
		code = wasm[0]
	}
	p, err := h.Compile(context.Background(), "policy.wasm", code)
	testenv.Must(t, err, "compiling the policy")
	return p
}

// truth is what the registry itself says of an image reference, read
// with ggcr's remote, not through regcap.
type truth struct {
	Ref string
	// Repo is Ref without its tag.
	Repo string
	// Digest is the digest of what Ref names (an index's own digest).
	Digest string
	// Manifests is the number of an index's manifests; 0 for an image.
	Manifests int
	// Resolved is the digest of the image manifest for workerPlatform
	// (Digest itself for an image).
	Resolved string
	// User is that image's config's User.
	User string
}

// shape is how the policy describes what the reference names.
func (tr truth) shape() string {
	if tr.Manifests > 0 {
		return fmt.Sprintf("index %s of %d manifests", tr.Digest, tr.Manifests)
	}
	return "image " + tr.Digest
}

// readTruth reads ref's digest, manifest and config for workerPlatform
// from the registry.
func readTruth(t testing.TB, ref string, opts ...remote.Option) truth {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	testenv.Must(t, err, "parsing %s", ref)
	desc, err := remote.Get(r, opts...)
	testenv.Must(t, err, "reading %s from the registry", ref)
	tr := truth{Ref: ref, Repo: r.Context().Name(), Digest: desc.Digest.String()}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		testenv.Must(t, err, "reading index %s", ref)
		im, err := idx.IndexManifest()
		testenv.Must(t, err, "reading index %s", ref)
		tr.Manifests = len(im.Manifests)
	}
	img, err := remote.Image(r, append(opts, remote.WithPlatform(workerPlatform))...)
	testenv.Must(t, err, "reading %s for %s", ref, workerPlatform)
	d, err := img.Digest()
	testenv.Must(t, err, "digest of %s", ref)
	cf, err := img.ConfigFile()
	testenv.Must(t, err, "config of %s", ref)
	tr.Resolved, tr.User = d.String(), cf.Config.User
	return tr
}

// image is a small random image whose config runs as user on platform.
func image(t testing.TB, user string, p v1.Platform) v1.Image {
	t.Helper()
	img, err := random.Image(512, 1)
	testenv.Must(t, err, "making an image")
	cf, err := img.ConfigFile()
	testenv.Must(t, err, "reading its config")
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config.User = user
	img, err = mutate.ConfigFile(img, cf)
	testenv.Must(t, err, "setting its config")
	return img
}

func push(t testing.TB, host, repoTag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	testenv.Must(t, err, "parsing %s", repoTag)
	testenv.Must(t, remote.Write(ref, img), "pushing %s", ref)
	return ref.String()
}

// pushIndex pushes a Docker manifest list of one image per user, for
// linux/amd64 then linux/arm64.
func pushIndex(t testing.TB, host, repoTag, amdUser, armUser string) string {
	t.Helper()
	amd64 := v1.Platform{OS: "linux", Architecture: "amd64"}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.DockerManifestList),
		mutate.IndexAddendum{Add: image(t, amdUser, amd64), Descriptor: v1.Descriptor{Platform: &amd64}},
		mutate.IndexAddendum{Add: image(t, armUser, workerPlatform), Descriptor: v1.Descriptor{Platform: &workerPlatform}},
	)
	ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	testenv.Must(t, err, "parsing %s", repoTag)
	testenv.Must(t, remote.WriteIndex(ref, idx), "pushing %s", ref)
	return ref.String()
}

// images are the fixtures every test pushes, by role.
type images struct {
	NonRoot, Root, RootName, Index, Private, Pinned truth
	// Missing names a tag that was never pushed.
	Missing string
}

// pushImages pushes the fixtures and reads the registry's truth for each.
func (f *fleet) pushImages(t testing.TB) images {
	t.Helper()
	amd64 := v1.Platform{OS: "linux", Architecture: "amd64"}
	host := f.Reg.Host
	nonRoot := push(t, host, "apps/nonroot:v1", image(t, "1000", amd64))
	root := push(t, host, "apps/root:v1", image(t, "", amd64))
	rootName := push(t, host, "apps/rootname:v1", image(t, "root:root", amd64))
	index := pushIndex(t, host, "apps/multi:v1", "1000", "0")
	pinnedImg := image(t, "65532:65532", amd64)
	push(t, host, "apps/pinned:v1", pinnedImg)
	d, err := pinnedImg.Digest()
	testenv.Must(t, err, "digest")
	push(t, f.Private.Push.Host, "team/app:v1", image(t, "65532", amd64))
	private := f.Private.Host + "/team/app:v1"
	auth := remote.WithAuth(&authn.Basic{Username: testenv.TokenUser, Password: testenv.TokenPass})
	return images{
		NonRoot:  readTruth(t, nonRoot),
		Root:     readTruth(t, root),
		RootName: readTruth(t, rootName),
		Index:    readTruth(t, index),
		Private:  readTruth(t, private, auth),
		Pinned:   readTruth(t, host+"/apps/pinned@"+d.String()),
		Missing:  host + "/apps/missing:v1",
	}
}

// pod is a Pod's AdmissionRequest with these images.
func pod(initImages []string, images ...string) json.RawMessage {
	containers := func(imgs []string) []map[string]string {
		var cs []map[string]string
		for i, img := range imgs {
			cs = append(cs, map[string]string{"name": fmt.Sprintf("c%d", i), "image": img})
		}
		return cs
	}
	spec := map[string]any{"containers": containers(images)}
	if len(initImages) > 0 {
		spec["initContainers"] = containers(initImages)
	}
	req := map[string]any{
		"uid":       "705ab4f5-6393-11e8-b7cc-42010a800002",
		"kind":      map[string]string{"group": "", "version": "v1", "kind": "Pod"},
		"resource":  map[string]string{"group": "", "version": "v1", "resource": "pods"},
		"name":      "web",
		"namespace": "default",
		"operation": "CREATE",
		"userInfo":  map[string]any{"username": "alice", "groups": []string{"system:authenticated"}},
		"object": map[string]any{
			"apiVersion": "v1", "kind": "Pod",
			"metadata": map[string]any{"name": "web", "namespace": "default"},
			"spec":     spec,
		},
	}
	b, _ := json.Marshal(req)
	return b
}

// validationRequest is Kubewarden's ValidationRequest for req and
// settings.
func validationRequest(req, settings json.RawMessage) []byte {
	if settings == nil {
		settings = json.RawMessage(`{}`)
	}
	b, _ := json.Marshal(map[string]json.RawMessage{"request": req, "settings": settings})
	return b
}

// response is Kubewarden's ValidationResponse, with the mutated Pod's
// images.
type response struct {
	Accepted      bool            `json:"accepted"`
	Message       *string         `json:"message"`
	Code          *uint16         `json:"code"`
	MutatedObject json.RawMessage `json:"mutated_object"`
}

// mutatedImages returns the images of a mutated Pod: init containers
// first, then containers; nil when the policy did not mutate.
func (r response) mutatedImages(t testing.TB) []string {
	t.Helper()
	if len(r.MutatedObject) == 0 || string(r.MutatedObject) == "null" {
		return nil
	}
	var p struct {
		Spec struct {
			InitContainers, Containers []struct{ Image string }
		}
	}
	testenv.Must(t, json.Unmarshal(r.MutatedObject, &p), "decoding the mutated object %s", r.MutatedObject)
	var out []string
	for _, c := range append(p.Spec.InitContainers, p.Spec.Containers...) {
		out = append(out, c.Image)
	}
	return out
}
