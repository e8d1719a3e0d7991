// Command policy is a Kubewarden WASI policy written with policy-sdk-go, as
// a policy author writes one, built with GOOS=wasip1 GOARCH=wasm go build.
// The tests in the parent folder run it in client/wasihost and through
// `requester run`, its kubewarden/oci host calls answered by a regcap
// fleet.
//
// For every container image of the object (Pod, Deployment, …) it asks
// the host, through the SDK's own capabilities, for the image's digest
// (manifest_digest), its manifest (manifest) and its config for the
// host's platform (manifest_config), and
//   - rejects an image the host cannot resolve (the SDK's error path),
//   - rejects an image whose config runs as root (User "", "0", "root",
//     or a 0/root user with a group),
//   - with settings {"pin_tags": true}, mutates every tag to the digest
//     the host returned (repo@sha256:…).
//
// Messages name what the host answered (digests, number of manifests of an
// index, the user) so that the tests can compare them with the registry.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	corev1 "github.com/kubewarden/k8s-objects/api/core/v1"
	sdk "github.com/kubewarden/policy-sdk-go"
	"github.com/kubewarden/policy-sdk-go/pkg/capabilities"
	"github.com/kubewarden/policy-sdk-go/pkg/capabilities/oci/manifest"
	"github.com/kubewarden/policy-sdk-go/pkg/capabilities/oci/manifest_config"
	"github.com/kubewarden/policy-sdk-go/pkg/capabilities/oci/manifest_digest"
	"github.com/kubewarden/policy-sdk-go/protocol"
)

// Settings are the policy's settings.
type Settings struct {
	// PinTags mutates image tags to the digests the host returned.
	PinTags bool `json:"pin_tags"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: policy validate|validate-settings")
		os.Exit(2)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading stdin:", err)
		os.Exit(1)
	}
	var out []byte
	switch os.Args[1] {
	case "validate":
		out, err = validate(input)
	case "validate-settings":
		out, err = validateSettings(input)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_, _ = os.Stdout.Write(out)
}

func parseSettings(raw []byte) (Settings, error) {
	var s Settings
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return s, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err := dec.Decode(&s)
	return s, err
}

func validateSettings(input []byte) ([]byte, error) {
	if _, err := parseSettings(input); err != nil {
		return sdk.RejectSettings(sdk.Message("invalid settings: " + err.Error()))
	}
	return sdk.AcceptSettings()
}

func validate(input []byte) ([]byte, error) {
	var req protocol.ValidationRequest
	if err := json.Unmarshal(input, &req); err != nil {
		return sdk.RejectRequest(sdk.Message("cannot decode the validation request: "+err.Error()), 400)
	}
	settings, err := parseSettings(req.Settings)
	if err != nil {
		return sdk.RejectRequest(sdk.Message("invalid settings: "+err.Error()), 400)
	}
	spec, err := sdk.ExtractPodSpecFromObject(req)
	if err != nil {
		return sdk.RejectRequest(sdk.Message("cannot read the pod spec: "+err.Error()), 400)
	}
	host := capabilities.NewHost()
	var violations []string
	mutated := false
	check := func(image string) string {
		digest, err := manifest_digest.GetOCIManifestDigest(&host, image)
		if err != nil {
			violations = append(violations, fmt.Sprintf("%s: manifest_digest: %v", image, err))
			return image
		}
		m, err := manifest.GetOCIManifest(&host, image)
		if err != nil {
			violations = append(violations, fmt.Sprintf("%s: manifest: %v", image, err))
			return image
		}
		shape := "image " + digest
		if idx := m.IndexManifest(); idx != nil {
			shape = fmt.Sprintf("index %s of %d manifests", digest, len(idx.Manifests))
		}
		mc, err := manifest_config.GetOCIManifestAndConfig(&host, image)
		if err != nil {
			violations = append(violations, fmt.Sprintf("%s: manifest_config: %v", image, err))
			return image
		}
		user := ""
		if mc.ImageConfig != nil {
			user = mc.ImageConfig.Config.User
		}
		if runsAsRoot(user) {
			violations = append(violations, fmt.Sprintf("%s: runs as root (user %q, manifest %s, %s)", image, user, mc.Digest, shape))
			return image
		}
		if settings.PinTags && !strings.Contains(image, "@") {
			mutated = true
			return repository(image) + "@" + digest
		}
		return image
	}
	for _, cs := range [][]*corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range cs {
			if c != nil && c.Image != "" {
				c.Image = check(c.Image)
			}
		}
	}
	for _, c := range spec.EphemeralContainers {
		if c != nil && c.Image != "" {
			c.Image = check(c.Image)
		}
	}
	switch {
	case len(violations) > 0:
		return sdk.RejectRequest(sdk.Message(strings.Join(violations, "; ")), 403)
	case mutated:
		return sdk.MutatePodSpecFromRequest(req, spec)
	}
	return sdk.AcceptRequest()
}

// runsAsRoot says whether an image config's User runs as root: unset,
// uid 0 or the name root, with or without a group.
func runsAsRoot(user string) bool {
	u, _, _ := strings.Cut(user, ":")
	return u == "" || u == "0" || u == "root"
}

// repository strips the tag from an image reference: the host, port and
// path stay.
func repository(image string) string {
	slash := strings.LastIndex(image, "/")
	if colon := strings.LastIndex(image, ":"); colon > slash {
		return image[:colon]
	}
	return image
}
