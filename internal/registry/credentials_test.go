package registry_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/regcap/regcap/internal/registry"
	"github.com/regcap/regcap/internal/testenv"
)

// A credential helper that hangs is killed after the helper timeout, and
// the lookup fails instead of hanging the set-up.
func TestCredentialHelperTimeout(t *testing.T) {
	dir := t.TempDir()
	testenv.Must(t, os.WriteFile(filepath.Join(dir, "docker-credential-hang"), []byte("#!/bin/sh\nexec sleep 60\n"), 0o755), "helper")
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	p := filepath.Join(dir, "config.json")
	testenv.Must(t, os.WriteFile(p, []byte(`{"credsStore":"hang"}`), 0o600), "config")
	kc, err := registry.LoadDockerConfig(p, registry.WithHelperTimeout(200*time.Millisecond))
	testenv.Must(t, err, "config")
	repo, err := name.NewRepository("registry.regcap.test/x/y")
	testenv.Must(t, err, "repo")
	start := time.Now()
	ch := make(chan error, 1)
	go func() { _, err := kc.Resolve(repo); ch <- err }()
	err = waitErr(t, "a hanging credential helper", ch)
	if err == nil || !strings.Contains(err.Error(), "docker-credential-hang") {
		t.Errorf("hanging helper: %v, want an error naming it", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("hanging helper returned after %s, want about the 200ms timeout", d)
	}
	// The caller's context ends it too.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	kc2, err := registry.LoadDockerConfig(p)
	testenv.Must(t, err, "config")
	go func() { _, err := kc2.ResolveContext(ctx, repo); ch <- err }()
	if err := waitErr(t, "a hanging credential helper under a deadline", ch); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("hanging helper under a 100ms deadline: %v", err)
	}
}

// installHelper puts an executable docker-credential-<name> with the given
// shell body first on PATH.
func installHelper(t *testing.T, helper, body string) {
	t.Helper()
	dir := t.TempDir()
	testenv.Must(t, os.WriteFile(filepath.Join(dir, "docker-credential-"+helper), []byte("#!/bin/sh\n"+body), 0o755), "helper")
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// captureStderr runs f with os.Stderr redirected to a pipe and returns
// what was written to it.
func captureStderr(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	testenv.Must(t, err, "pipe")
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&buf, r); close(done) }()
	saved := os.Stderr
	os.Stderr = w
	func() {
		defer func() { os.Stderr = saved }()
		f()
	}()
	w.Close()
	<-done
	r.Close()
	return buf.String()
}

// A credential helper that prints a secret and fails: the error (which
// becomes the reply message, and may be cached as a failure) and the
// worker's stderr never show what it printed, on stdout or stderr; they
// say how it failed. "credentials not found" still means anonymous.
func TestCredentialHelperOutputNeverShown(t *testing.T) {
	const outSecret, errSecret = "S3CRET-on-stdout-7731", "S3CRET-on-stderr-9912"
	installHelper(t, "leaky", "cat >/dev/null\n"+
		`echo '{"ServerURL":"x","Username":"robot","Secret":"`+outSecret+`"}'`+"\n"+
		"echo 'debug: token "+errSecret+"' >&2\nexit 1\n")
	installHelper(t, "garbled", "cat >/dev/null\necho 'Secret: "+outSecret+"'\n")
	installHelper(t, "none", "cat >/dev/null\necho 'credentials not found in native keychain'\nexit 1\n")
	dir := t.TempDir()
	repo, err := name.NewRepository("registry.regcap.test/x/y")
	testenv.Must(t, err, "repo")
	resolveWith := func(helper string) (authn.Authenticator, error) {
		p := filepath.Join(dir, helper+".json")
		testenv.Must(t, os.WriteFile(p, []byte(`{"credsStore":"`+helper+`"}`), 0o600), "config")
		kc, err := registry.LoadDockerConfig(p)
		testenv.Must(t, err, "config")
		return kc.Resolve(repo)
	}

	var err1 error
	stderr := captureStderr(t, func() { _, err1 = resolveWith("leaky") })
	if err1 == nil {
		t.Fatal("a failing helper gave no error")
	}
	t.Logf("failing helper: %v", err1)
	if strings.Contains(err1.Error(), "S3CRET") || strings.Contains(stderr, "S3CRET") {
		t.Errorf("a failing helper's output leaked:\n error: %q\nstderr: %q", err1, stderr)
	}
	if !strings.Contains(err1.Error(), "docker-credential-leaky") || !strings.Contains(err1.Error(), "exit status 1") {
		t.Errorf("error %q should name the helper and its exit status", err1)
	}

	_, err2 := resolveWith("garbled")
	if err2 == nil || strings.Contains(err2.Error(), "S3CRET") || !strings.Contains(err2.Error(), "not credentials JSON") {
		t.Errorf("helper answering garbage: %v", err2)
	}

	a, err := resolveWith("none")
	if err != nil || a != authn.Anonymous {
		t.Errorf("helper without credentials: %v, %v; want anonymous, no error", a, err)
	}
}

// A docker config with "auths": null, looked up concurrently: the lookup
// only reads the config (-race catches a write).
func TestDockerConfigNullAuthsConcurrent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.json")
	testenv.Must(t, os.WriteFile(p, []byte(`{"auths":null}`), 0o600), "config")
	kc, err := registry.LoadDockerConfig(p)
	testenv.Must(t, err, "config")
	repo, err := name.NewRepository("registry.regcap.test/x/y")
	testenv.Must(t, err, "repo")
	concurrently(t, 8, func() error {
		a, err := kc.Resolve(repo)
		if err == nil && a != authn.Anonymous {
			err = errors.New("credentials from an empty config")
		}
		return err
	})
}
