package worker_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
)

// TestNoCredentialLeavesTheProcess runs the worker binary at debug level
// against a Basic-auth registry and a Bearer-token registry, with
// successful and failing fetches (a wrong password, a token endpoint
// refusing a refresh), then searches everything the worker wrote for
// every secret: its stderr (zap and the standard log package), the error
// replies, the metrics, and every Redis key and value. A password, its
// base64 Basic form and each Bearer token issued must appear nowhere.
func TestNoCredentialLeavesTheProcess(t *testing.T) {
	testenv.Long(t, "builds and runs the worker binary")
	cleanAccessEnv(t)
	const user, pass, wrongPass = "robot", "basic-pw-5517-secret", "wrong-pw-9931-secret"
	basic, basicRef := basicAuthRegistry(t, user, pass)
	refused, refusedRef := basicAuthRegistry(t, user, pass) // configured with wrongPass below
	tokens := testenv.StartTokenRegistry(t)
	img := tokens.Push.PushImage(t, "team/app", "v1", testenv.OCIManifest, "linux/amd64")
	tokenRef := tokens.Host + "/team/app:v1"

	dir := t.TempDir()
	cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q},%q:{"auth":%q},%q:{"auth":%q}}}`,
		basic.Host, b64(user+":"+pass), refused.Host, b64(user+":"+wrongPass), tokens.Host, b64(testenv.TokenUser+":"+testenv.TokenPass))
	write(t, filepath.Join(dir, "config.json"), cfg)

	ns := testenv.StartNATS(t)
	rd := testenv.StartRedis(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	var stderr testenv.SyncBuffer
	cmd := exec.Command(testenv.BuildCommand(t, "worker"), "--nats-url", ns.ClientURL(), "--redis-url", rd.URL(),
		"--docker-config", dir, "--deny-cidrs", "", "--metrics-addr", metricsAddr, "--log-level", "debug")
	cmd.Env = os.Environ()
	cmd.Stderr, cmd.Stdout = &stderr, &stderr
	testenv.Must(t, cmd.Start(), "starting worker")
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	cli := client.New(testenv.Connect(t, ns.ClientURL()), client.WithTimeout(30*time.Second))
	testenv.Eventually(t, "the worker to answer", func() bool {
		_, err := cli.Call(context.Background(), contract.ManifestDigest, []byte(`""`))
		var ce *contract.Error
		return errors.As(err, &ce) && ce.Code == 400
	})
	var replies strings.Builder
	ask := func(image string, wantCode int) {
		t.Helper()
		for _, fn := range contract.Functions() {
			r, err := cli.Image(context.Background(), fn, image)
			var ce *contract.Error
			switch {
			case wantCode == 0 && err != nil:
				t.Errorf("%s %s: %v", fn, image, err)
			case wantCode != 0 && (!errors.As(err, &ce) || ce.Code != wantCode):
				t.Errorf("%s %s: %v, want %d", fn, image, err, wantCode)
			}
			if err != nil {
				fmt.Fprintln(&replies, err)
			} else {
				replies.Write(r.Body)
			}
		}
	}
	ask(basicRef, 0)
	ask(refusedRef, 401)
	ask(tokenRef, 0)
	// The token endpoint refuses the refresh after the tokens expire.
	tokens.TokenFail.Store(http.StatusUnauthorized)
	tokens.Expire(0)
	ask(tokens.Host+"/team/app@"+img.Digest, 401)

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	testenv.Must(t, err, "scraping")
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	var redisDump strings.Builder
	rdb := rd.Client(t)
	keys, err := rdb.Keys(context.Background(), "*").Result()
	testenv.Must(t, err, "KEYS")
	if len(keys) == 0 {
		t.Fatal("nothing reached Redis: the test would search nothing")
	}
	for _, k := range keys {
		redisDump.WriteString(k + "\n")
		if v, err := rdb.Get(context.Background(), k).Bytes(); err == nil {
			redisDump.Write(v)
		}
	}

	testenv.Must(t, cmd.Process.Signal(syscall.SIGTERM), "SIGTERM")
	if err := <-exited; err != nil {
		t.Errorf("worker exit: %v", err)
	}

	secrets := map[string]string{
		"password":               pass,
		"wrong password":         wrongPass,
		"token password":         testenv.TokenPass,
		"Basic credential":       b64(user + ":" + pass),
		"wrong Basic credential": b64(user + ":" + wrongPass),
		"token Basic credential": b64(testenv.TokenUser + ":" + testenv.TokenPass),
	}
	issued := tokens.Issued()
	if len(issued) == 0 {
		t.Fatal("no Bearer token was issued: the test would search for none")
	}
	for i, tok := range issued {
		secrets[fmt.Sprintf("Bearer token %d", i)] = tok
	}
	outputs := map[string]string{"stderr": stderr.String(), "error replies and bodies": replies.String(),
		"metrics": string(metrics), "redis keys and values": redisDump.String()}
	if !strings.Contains(outputs["stderr"], `"level":"debug"`) {
		t.Fatal("no debug line on stderr: the test would search an empty log")
	}
	for where, text := range outputs {
		for what, secret := range secrets {
			if strings.Contains(text, secret) {
				t.Errorf("the %s appears in the %s", what, where)
			}
		}
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
