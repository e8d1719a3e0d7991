package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/google/go-containerregistry/pkg/authn"
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
