package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/contract"
)

// manifestAccept is what a HEAD for a manifest digest accepts: the OCI
// and Docker manifest and index types, as the worker's HEAD does.
const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// HeadFloor returns the floor of the cold path: a plain keep-alive HTTP
// client that sends, for request number seq, one anonymous HEAD for the
// manifest of refs[seq] to its registry. A cold manifest_digest miss can
// go no faster than that. conc bounds its idle connections, as the
// measurement's concurrency does.
func HeadFloor(refs []string, conc int) (Call, error) {
	urls := make([]string, len(refs))
	for i, r := range refs {
		u, err := headURL(r)
		if err != nil {
			return nil, err
		}
		urls[i] = u
	}
	h := newHeader(conc)
	return func(ctx context.Context, seq int) (contract.Outcome, error) {
		_, err := h.head(ctx, urls[seq%len(urls)])
		return "", err
	}, nil
}

// headURL is the manifest URL of ref.
func headURL(ref string) (string, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", fmt.Errorf("%s: %w", ref, err)
	}
	reg := r.Context().Registry
	return fmt.Sprintf("%s://%s/v2/%s/manifests/%s", reg.Scheme(), reg.RegistryStr(), r.Context().RepositoryStr(), r.Identifier()), nil
}

// header sends anonymous manifest HEADs over keep-alive connections.
type header struct{ hc *http.Client }

func newHeader(conc int) *header {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = max(conc, 2)
	return &header{hc: &http.Client{Transport: tr}}
}

// head returns the digest the registry gives for the manifest at url.
func (h *header) head(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := h.hc.Do(req)
	if err != nil {
		return "", err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := resp.Header.Get("Docker-Content-Digest")
	if resp.StatusCode != http.StatusOK || d == "" {
		return "", fmt.Errorf("HEAD %s: %s", url, resp.Status)
	}
	return d, nil
}
