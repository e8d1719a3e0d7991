package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/credentials"
	"github.com/docker/cli/cli/config/types"
	helpercreds "github.com/docker/docker-credential-helpers/credentials"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

// DockerConfig is a keychain over a Docker config file (config.json, or a
// Kubernetes .dockerconfigjson pull secret, which has the same format). It
// re-reads the file when its content changes, so that a rotated, mounted
// secret is used without a restart. It is safe for concurrent use.
type DockerConfig struct {
	path     string // "" when no file is configured or found
	explicit bool
	interval time.Duration
	now      func() time.Time
	onError  func(error)
	// helperTimeout bounds one run of a docker-credential helper.
	helperTimeout time.Duration

	mu      sync.Mutex
	cf      *configfile.ConfigFile
	sum     [sha256.Size]byte
	checked time.Time
	lastErr string
}

// DockerConfigOption configures a DockerConfig.
type DockerConfigOption func(*DockerConfig)

// WithReloadInterval sets how often, at most, the file is read again to
// look for changes (default 1 s; 0 checks before every registry
// connection set-up).
func WithReloadInterval(d time.Duration) DockerConfigOption {
	return func(c *DockerConfig) { c.interval = d }
}

// WithReloadErrors sets a function told when re-reading the file fails
// (the previous credentials stay in use). It is called once per distinct
// error, not on every check.
func WithReloadErrors(f func(error)) DockerConfigOption {
	return func(c *DockerConfig) { c.onError = f }
}

// DefaultHelperTimeout bounds one run of a docker-credential helper.
const DefaultHelperTimeout = 10 * time.Second

// WithHelperTimeout sets how long a docker-credential helper may run
// before it is killed and the lookup fails (default DefaultHelperTimeout).
func WithHelperTimeout(d time.Duration) DockerConfigOption {
	return func(c *DockerConfig) { c.helperTimeout = d }
}

// LoadDockerConfig reads the Docker config at path: a config.json, a
// .dockerconfigjson file, or a folder holding either. An empty path looks
// where Docker does ($DOCKER_CONFIG/config.json, then
// ~/.docker/config.json) and is not an error when nothing is there: pulls
// are then anonymous.
func LoadDockerConfig(path string, opts ...DockerConfigOption) (*DockerConfig, error) {
	d := &DockerConfig{interval: time.Second, now: time.Now, cf: configfile.New(""), helperTimeout: DefaultHelperTimeout}
	for _, o := range opts {
		o(d)
	}
	if path == "" {
		dir := os.Getenv("DOCKER_CONFIG")
		if dir == "" {
			if home, err := os.UserHomeDir(); err == nil {
				dir = filepath.Join(home, ".docker")
			}
		}
		if dir != "" {
			d.path = filepath.Join(dir, "config.json")
		}
	} else {
		d.explicit = true
		p, err := configPath(path)
		if err != nil {
			return nil, err
		}
		d.path = p
	}
	if d.path == "" {
		return d, nil
	}
	if _, err := d.load(); err != nil {
		if !d.explicit && errors.Is(err, fs.ErrNotExist) {
			return d, nil
		}
		return nil, err
	}
	d.checked = d.now()
	return d, nil
}

// configPath turns a folder into the config file inside it.
func configPath(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("docker config: %w", err)
	}
	if !st.IsDir() {
		return path, nil
	}
	for _, n := range []string{"config.json", ".dockerconfigjson"} {
		p := filepath.Join(path, n)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("docker config: %s holds neither config.json nor .dockerconfigjson", path)
}

// Path is the file read, or "" when none.
func (d *DockerConfig) Path() string { return d.path }

// load reads the file and swaps it in if its content changed. Called with
// d.mu held, or before d is shared.
func (d *DockerConfig) load() (bool, error) {
	b, err := os.ReadFile(d.path)
	if err != nil {
		return false, fmt.Errorf("docker config: %w", err)
	}
	sum := sha256.Sum256(b)
	if sum == d.sum {
		return false, nil
	}
	cf := configfile.New(d.path)
	if err := cf.LoadFromReader(bytes.NewReader(b)); err != nil {
		// The decoder's message never quotes the file's content.
		return false, fmt.Errorf("docker config %s: %w", d.path, err)
	}
	d.cf, d.sum = cf, sum
	return true, nil
}

// Reload reads the file again if the reload interval has passed and reports
// whether the credentials changed. On error the previous credentials stay
// in use (a secret being rewritten may be briefly missing or partial).
func (d *DockerConfig) Reload() (bool, error) {
	if d.path == "" {
		return false, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	if d.interval > 0 && now.Sub(d.checked) < d.interval {
		return false, nil
	}
	d.checked = now
	changed, err := d.load()
	if err != nil && !d.explicit && errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err == nil {
		d.lastErr = ""
	} else if d.onError != nil && err.Error() != d.lastErr {
		d.lastErr = err.Error()
		d.onError(err)
	}
	return changed, err
}

func (d *DockerConfig) current() *configfile.ConfigFile {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cf
}

// Resolve implements authn.Keychain: the credentials for target's registry,
// or authn.Anonymous when the file has none for it.
func (d *DockerConfig) Resolve(target authn.Resource) (authn.Authenticator, error) {
	return d.ResolveContext(context.Background(), target)
}

// ResolveContext implements authn.ContextKeychain: Resolve, with a
// credential helper run under ctx and the helper timeout.
func (d *DockerConfig) ResolveContext(ctx context.Context, target authn.Resource) (authn.Authenticator, error) {
	ac, ok, err := lookupAuth(ctx, d.current(), target.RegistryStr(), d.helperTimeout)
	if err != nil || !ok {
		return authn.Anonymous, err
	}
	return authn.FromConfig(authn.AuthConfig{
		Username:      ac.Username,
		Password:      ac.Password,
		IdentityToken: ac.IdentityToken,
		RegistryToken: ac.RegistryToken,
	}), nil
}

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
