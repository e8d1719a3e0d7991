package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/credentials"
	"github.com/docker/cli/cli/config/types"
	helpercreds "github.com/docker/docker-credential-helpers/credentials"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// hubHosts are the spellings of Docker Hub found in config files. It is
// unexported and only ever read, never modified.
var hubHosts = map[string]bool{"index.docker.io": true, "docker.io": true, "registry-1.docker.io": true}

// authKeys lists the config keys that may hold host's credentials, the
// one Docker itself writes first.
func authKeys(host string) []string {
	if hubHosts[host] {
		return []string{authn.DefaultAuthKey, "index.docker.io", "docker.io", "registry-1.docker.io",
			"https://index.docker.io", "https://docker.io", "https://registry-1.docker.io"}
	}
	return []string{host, "https://" + host, "http://" + host}
}

func sameRegistry(key, host string) bool {
	k := credentials.ConvertToHostname(key)
	if hubHosts[host] {
		return hubHosts[k]
	}
	return k == host
}

// lookupAuth finds host's credentials: a credential helper named for the
// host in credHelpers wins, then credsStore, then auths (any spelling of
// the host, including Docker Hub's several).
func lookupAuth(ctx context.Context, cf *configfile.ConfigFile, host string, timeout time.Duration) (types.AuthConfig, bool, error) {
	if cf == nil {
		return types.AuthConfig{}, false, nil
	}
	if r, err := name.NewRegistry(host); err == nil {
		host = r.RegistryStr()
	}
	keys := authKeys(host)
	helper, helperKey := "", keys[0]
	for _, k := range keys {
		if h, ok := cf.CredentialHelpers[k]; ok && h != "" {
			helper, helperKey = h, k
			break
		}
	}
	if helper == "" {
		helper = cf.CredentialsStore
	}
	if helper != "" {
		ac, err := helperGet(ctx, helper, helperKey, timeout)
		if err != nil {
			// The helper's error names the helper, never the secret.
			return types.AuthConfig{}, false, fmt.Errorf("credential helper docker-credential-%s for %s: %w", helper, host, err)
		}
		if !emptyAuth(ac) {
			return ac, true, nil
		}
	}
	// cf.AuthConfigs, read directly: GetAuthConfigs writes an empty map
	// into a nil one ("auths": null), a data race between concurrent
	// lookups. Ranging over and indexing a nil map are fine.
	auths := cf.AuthConfigs
	for _, k := range keys {
		if ac, ok := auths[k]; ok && !emptyAuth(ac) {
			return ac, true, nil
		}
	}
	for k, ac := range auths {
		if sameRegistry(k, host) && !emptyAuth(ac) {
			return ac, true, nil
		}
	}
	return types.AuthConfig{}, false, nil
}

// helperGet asks docker-credential-<helper> for serverAddress's
// credentials, as Docker's native store does, but killed when ctx ends or
// timeout passes: a helper that hangs (waiting for a keyring unlock, a
// network call) must not hang the set-up of registry connections.
//
// Nothing the helper prints ever reaches an error or a log: its stdout is
// where the secret is, and a helper that fails may still have printed it
// (or part of it), and its stderr is the helper's own business (debug
// output of some helpers includes tokens). Errors say only how it failed:
// its exit status, a timeout, or an answer that is not credentials JSON.
// (docker-credential-helpers' client.Get quotes the whole stdout in its
// error, which is why it is not used here.)
func helperGet(ctx context.Context, helper, serverAddress string, timeout time.Duration) (types.AuthConfig, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "docker-credential-"+helper, helpercreds.ActionGet)
	cmd.Stdin = strings.NewReader(serverAddress)
	// Counted, never kept: only its size is reported.
	var stderr countingWriter
	cmd.Stderr = &stderr
	// A helper's children may hold its stdout open after it is killed;
	// do not wait for them.
	cmd.WaitDelay = time.Second
	out, err := cmd.Output()
	if err != nil {
		if helpercreds.IsErrCredentialsNotFoundMessage(string(out)) {
			return types.AuthConfig{}, nil
		}
		if ctx.Err() != nil {
			return types.AuthConfig{}, fmt.Errorf("no answer in time (helper timeout %s): %w", timeout, ctx.Err())
		}
		return types.AuthConfig{}, helperFailure(err, len(out), stderr.n)
	}
	var creds helpercreds.Credentials
	if err := json.Unmarshal(out, &creds); err != nil {
		// The decoder's error may quote part of the output.
		return types.AuthConfig{}, fmt.Errorf("answered %d bytes that are not credentials JSON (output not shown: it may hold credentials)", len(out))
	}
	ac := types.AuthConfig{ServerAddress: serverAddress}
	if creds.Username == "<token>" {
		// Docker's convention for an identity token.
		ac.IdentityToken = creds.Secret
	} else {
		ac.Username, ac.Password = creds.Username, creds.Secret
	}
	return ac, nil
}

// helperFailure describes a failed helper run by its exit status and the
// sizes of what it printed, never by the output itself.
func helperFailure(err error, stdout, stderr int) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		// ExitError's message is the status ("exit status 1", "signal:
		// killed"); it never includes the output.
		return fmt.Errorf("failed (%s; %d bytes on stdout, %d on stderr, not shown: they may hold credentials; run it by hand to see them)",
			ee.ProcessState, stdout, stderr)
	}
	// Not started (not on PATH, not executable): exec's error names the
	// program, not any output.
	return err
}

// countingWriter discards what is written to it and counts the bytes.
type countingWriter struct{ n int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	return len(p), nil
}

func emptyAuth(ac types.AuthConfig) bool {
	return ac.Username == "" && ac.Password == "" && ac.IdentityToken == "" && ac.RegistryToken == ""
}
