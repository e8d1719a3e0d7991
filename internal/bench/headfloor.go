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
		ref, err := name.ParseReference(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r, err)
		}
		reg := ref.Context().Registry
		urls[i] = fmt.Sprintf("%s://%s/v2/%s/manifests/%s", reg.Scheme(), reg.RegistryStr(), ref.Context().RepositoryStr(), ref.Identifier())
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = max(conc, 2)
	hc := &http.Client{Transport: tr}
	return func(ctx context.Context, seq int) (contract.Outcome, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, urls[seq%len(urls)], nil)
		if err != nil {
			return "", err
		}
		req.Header.Set("Accept", manifestAccept)
		resp, err := hc.Do(req)
		if err != nil {
			return "", err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") == "" {
			return "", fmt.Errorf("HEAD %s: %s", urls[seq%len(urls)], resp.Status)
		}
		return "", nil
	}, nil
}
