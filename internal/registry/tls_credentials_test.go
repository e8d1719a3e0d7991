package registry_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// capturedLogger returns a logger keeping every entry, at every level, and
// a function giving them all as JSON lines, fields included.
func capturedLogger(t *testing.T) (*zap.Logger, func() string) {
	t.Helper()
	core, obs := observer.New(zapcore.DebugLevel)
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(core), func() string {
		var b strings.Builder
		for _, e := range obs.All() {
			buf, err := enc.EncodeEntry(e.Entry, e.Context)
			testenv.Must(t, err, "encoding a log entry")
			b.Write(buf.Bytes())
			buf.Free()
		}
		return b.String()
	}
}

// A registry over HTTPS with a private CA and htpasswd auth: reached with
// the CA from source_authorities (inline PEM or a DER file) or as an
// insecure source, with the credentials of the docker config; wrong or
// missing credentials and an unknown CA are errors that say so, and never
// show the credentials.
func TestDistributionTLSAndCredentials(t *testing.T) {
	reg := startSecureRegistry(t)
	image := reg.host + "/team/app:v1"

	t.Run("right credentials", func(t *testing.T) {
		p := newPuller(t, pullerSetup{
			sources:      sourceAuthority(reg.host, reg.ca),
			dockerConfig: dockerConfigFor(reg.host, "alice", alicePassword),
		})
		reg.checkFixtures(t, p)
		// An unknown tag: distribution's own error code and message, one
		// line, without ggcr's %v of the detail ("map[Tag:nope]").
		msg := wantError(t, p, reg.host+"/team/app:nope", 404, "MANIFEST_UNKNOWN: manifest unknown")
		if strings.Contains(msg, "map[") {
			t.Errorf("404 message shows a Go map: %q", msg)
		}
	})
	t.Run("wrong credentials", func(t *testing.T) {
		const wrong = "not-the-password"
		log, logs := capturedLogger(t)
		p := newPuller(t, pullerSetup{
			sources:      sourceAuthority(reg.host, reg.ca),
			dockerConfig: dockerConfigFor(reg.host, "alice", wrong),
			log:          log,
		})
		// The message is what a worker answers, and what it logs with
		// "request failed" (resolve's failed).
		msg := wantError(t, p, image, 401, "refused the credentials configured for it", reg.host)
		basic := base64.StdEncoding.EncodeToString([]byte("alice:" + wrong))
		for _, secret := range []string{wrong, basic, "alice"} {
			if strings.Contains(msg, secret) {
				t.Errorf("message shows credentials (%q): %q", secret, msg)
			}
		}
		// Nor does the Puller's own error, before it is classified, or
		// anything the fetch logged.
		ref, err := name.ParseReference(image)
		testenv.Must(t, err, "ref")
		_, _, err = p.Head(context.Background(), ref)
		var ae *registry.AccessError
		if !errors.As(err, &ae) || !ae.CredentialsFound {
			t.Errorf("HEAD with wrong credentials: %v, want an access error with credentials found", err)
		}
		raw := fmt.Sprintf("%v %+v", err, err)
		all := logs()
		for _, secret := range []string{wrong, basic} {
			if strings.Contains(raw, secret) {
				t.Errorf("the error shows the password (%q): %s", secret, raw)
			}
			if strings.Contains(all, secret) {
				t.Errorf("the fetch's logs show the password (%q):\n%s", secret, all)
			}
		}
	})
	t.Run("no credentials", func(t *testing.T) {
		p := newPuller(t, pullerSetup{
			sources: sourceAuthority(reg.host, reg.ca),
			// Credentials for another registry only: they must not be sent here.
			dockerConfig: dockerConfigFor("other.regcap.test", "alice", alicePassword),
		})
		wantError(t, p, image, 401, "none were found", reg.host)
	})
	t.Run("unknown CA", func(t *testing.T) {
		p := newPuller(t, pullerSetup{dockerConfig: dockerConfigFor(reg.host, "alice", alicePassword)})
		wantError(t, p, image, 502, "TLS handshake with "+reg.host, "source_authorities", "insecure_sources")
	})
	t.Run("insecure source over TLS", func(t *testing.T) {
		// insecure_sources: HTTPS without verification comes first.
		p := newPuller(t, pullerSetup{
			sources:      "insecure_sources: [" + reg.host + "]\n",
			dockerConfig: dockerConfigFor(reg.host, "alice", alicePassword),
		})
		reg.checkFixtures(t, p)
	})
	t.Run("CA from a file, DER", func(t *testing.T) {
		der := filepath.Join(t.TempDir(), "ca.der")
		testenv.Must(t, os.WriteFile(der, reg.ca.Cert.Raw, 0o600), "ca")
		p := newPuller(t, pullerSetup{
			sources:      fmt.Sprintf(`{"source_authorities":{%q:[{"type":"Path","path":%q}]}}`, reg.host, der),
			dockerConfig: dockerConfigFor(reg.host, "alice", alicePassword),
		})
		reg.checkFixtures(t, p)
	})
}
