package worker_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/worker"
)

// TestValidate: every check of Config.Validate, one case each; the
// problems come back together, one *FieldError per problem naming its
// flag.
func TestValidate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		testenv.Must(t, os.WriteFile(p, []byte(body), 0o600), "write %s", name)
		return p
	}
	ca := testenv.NewCA(t)
	certPEM, keyPEM := ca.Issue(t, "127.0.0.1")
	cert, key := write("tls.crt", string(certPEM)), write("tls.key", string(keyPEM))
	_, otherKey := ca.Issue(t, "127.0.0.1")
	wrongKey := write("other.key", string(otherKey))
	caFile := write("ca.crt", string(ca.CertPEM))
	notPEM := write("not.pem", "hello")
	sources := write("sources.yaml", "insecure_sources: [\"127.0.0.1:5000\"]\n")
	badSources := write("bad-sources.yaml", "insecure_sourcez: []\n")
	dockerCfg := write("config.json", `{"auths":{}}`)
	badDocker := write("bad.json", `{"auths":`)
	missing := filepath.Join(dir, "missing")

	cases := []struct {
		name string
		set  func(c *worker.Config)
		want []string // one substring per problem, in order; none: valid
	}{
		{"defaults", func(c *worker.Config) {}, nil},
		{"zero config", func(c *worker.Config) { *c = worker.Config{} }, nil},
		{"negative durations", func(c *worker.Config) { c.FetchTimeout, c.LockWait, c.HTTPIdleTimeout = -1, -time.Second, -2 }, []string{"--fetch-timeout: want a duration of 0 or more", "--lock-wait: want a duration", "--http-idle-timeout: want"}},
		{"negative counts", func(c *worker.Config) { c.Concurrency, c.MaxPending, c.BlobLimit = -1, -5, -1 }, []string{"--concurrency: want 0 or more", "--max-pending: want 0 or more", "--max-config-size: want 0 or more"}},
		{"per registry over all", func(c *worker.Config) { c.Concurrency, c.ConcurrencyPerRegistry = 4, 8 }, []string{"--concurrency-per-registry: 8 is more than --concurrency 4"}},
		{"refresh ahead 1", func(c *worker.Config) { c.RefreshAhead = 1 }, []string{"--refresh-ahead: want a fraction from 0 (off) to below 1"}},
		{"jitter too large", func(c *worker.Config) { c.TTLJitter = 0.7 }, []string{"--ttl-jitter: want a fraction from 0 (off) to 0.5"}},
		{"NATS URL scheme", func(c *worker.Config) { c.NATSURL = "http://127.0.0.1:4222" }, []string{`--nats-url: "http://127.0.0.1:4222": scheme "http"`}},
		{"NATS URL list", func(c *worker.Config) { c.NATSURL = "nats://127.0.0.1:4222,,127.0.0.1:99999" }, []string{"--nats-url: \"\": empty server URL", `port "99999"`}},
		{"NATS URL bare host:port", func(c *worker.Config) { c.NATSURL = "127.0.0.1:4222, tls://a:4443" }, nil},
		{"NATS URL password redacted", func(c *worker.Config) { c.NATSURL = "nats://u:secret@:4222" }, []string{"--nats-url: \"nats://u:xxxxx@:4222\": no host"}},
		{"subject prefix", func(c *worker.Config) { c.SubjectPrefix = "kube..warden" }, []string{"--subject-prefix: \"kube..warden\": want dot-separated NATS subject tokens"}},
		{"subject prefix wildcard", func(c *worker.Config) { c.SubjectPrefix = "kube.*" }, []string{"--subject-prefix"}},
		{"queue group", func(c *worker.Config) { c.QueueGroup = "a b" }, []string{"--queue-group: \"a b\": want a name without spaces"}},
		{"redis URL", func(c *worker.Config) { c.RedisURL = "127.0.0.1:6379" }, []string{`--redis-url: "127.0.0.1:6379": want redis://`}},
		{"redis URL password redacted", func(c *worker.Config) { c.RedisURL = "redis://:hunter2@127.0.0.1:6379?bogus=1" }, []string{"--redis-url: \"redis://:xxxxx@127.0.0.1:6379?bogus=1\""}},
		{"redis mode", func(c *worker.Config) { c.RedisURL, c.RedisMode = "redis://127.0.0.1:6379", "replica" }, []string{`--redis-mode: want single, sentinel or cluster (or empty: told from --redis-url), got "replica"`}},
		{"redis mode without URL", func(c *worker.Config) { c.RedisMode = "cluster" }, []string{"--redis-mode: cluster is set but --redis-url is empty"}},
		{"sentinel without master", func(c *worker.Config) { c.RedisURL, c.RedisMode = "redis://127.0.0.1:26379", "sentinel" }, []string{"--redis-url: \"redis://127.0.0.1:26379\": want redis://[user:password@]host:port[/db] or rediss://…: redis sentinel URL: no master_name parameter"}},
		{"good redis URLs", func(c *worker.Config) { c.RedisURL = "redis://127.0.0.1:6379/2?addr=127.0.0.1:6380" }, nil},
		{"metrics addr", func(c *worker.Config) { c.MetricsAddr = "9090" }, []string{`--metrics-addr: "9090": want host:port or :port`}},
		{"metrics port", func(c *worker.Config) { c.MetricsAddr = ":http" }, []string{`--metrics-addr: ":http": port "http" is not a number`}},
		{"embedded NATS -1", func(c *worker.Config) { c.EmbeddedNATSAddr = "127.0.0.1:-1" }, nil},
		{"embedded NATS addr ignored with a URL", func(c *worker.Config) { c.NATSURL, c.EmbeddedNATSAddr = "nats://127.0.0.1:4222", "nonsense" }, nil},
		{"same port twice", func(c *worker.Config) { c.EmbeddedNATSAddr, c.MetricsAddr = "127.0.0.1:9090", ":9090" }, []string{"--metrics-addr: :9090 is also --embedded-nats-addr's address"}},
		{"same port, other hosts", func(c *worker.Config) { c.EmbeddedNATSAddr, c.MetricsAddr = "127.0.0.1:9090", "127.0.0.2:9090" }, nil},
		{"port 0 twice", func(c *worker.Config) { c.MetricsAddr, c.HTTPAddr, c.HTTPPlain = "127.0.0.1:0", "127.0.0.1:0", true }, nil},
		{"http without TLS", func(c *worker.Config) { c.HTTPAddr = ":8443" }, []string{"--http-addr: needs --tls-cert and --tls-key (or --http-plain on a loopback address)"}},
		{"http plain on all addresses", func(c *worker.Config) { c.HTTPAddr, c.HTTPPlain = ":8080", true }, []string{"--http-plain: serves plain HTTP on a loopback --http-addr only"}},
		{"http plain on loopback", func(c *worker.Config) { c.HTTPAddr, c.HTTPPlain = "127.0.0.1:8080", true }, nil},
		{"http plain and TLS", func(c *worker.Config) {
			c.HTTPAddr, c.HTTPPlain, c.TLSCert, c.TLSKey = "127.0.0.1:8080", true, cert, key
		}, []string{"--http-plain: and --tls-cert/--tls-key both given: choose one"}},
		{"http plain and client CA", func(c *worker.Config) { c.HTTPAddr, c.HTTPPlain, c.ClientCA = "127.0.0.1:8080", true, caFile }, []string{"--client-ca: client certificates need TLS"}},
		{"cert without key", func(c *worker.Config) { c.HTTPAddr, c.TLSCert = ":8443", cert }, []string{"--tls-key: missing: --tls-cert needs the private key"}},
		{"key without cert", func(c *worker.Config) { c.HTTPAddr, c.TLSKey = ":8443", key }, []string{"--tls-cert: missing: --tls-key needs the certificate"}},
		{"TLS files missing, each said once", func(c *worker.Config) { c.HTTPAddr, c.TLSCert, c.TLSKey = ":8443", missing, missing+".key" }, []string{"--tls-cert: open " + missing + ": no such file", "--tls-key: open " + missing + ".key: no such file"}},
		{"key of another cert", func(c *worker.Config) { c.HTTPAddr, c.TLSCert, c.TLSKey = ":8443", cert, wrongKey }, []string{"--tls-cert: " + cert + " and --tls-key " + wrongKey + " are not a PEM certificate and its private key"}},
		{"good TLS and client CA", func(c *worker.Config) { c.HTTPAddr, c.TLSCert, c.TLSKey, c.ClientCA = ":8443", cert, key, caFile }, nil},
		{"client CA not PEM", func(c *worker.Config) { c.HTTPAddr, c.TLSCert, c.TLSKey, c.ClientCA = ":8443", cert, key, notPEM }, []string{"--client-ca: " + notPEM + " holds no PEM certificate"}},
		{"client CA missing", func(c *worker.Config) { c.HTTPAddr, c.TLSCert, c.TLSKey, c.ClientCA = ":8443", cert, key, missing }, []string{"--client-ca: open " + missing}},
		{"TLS flags without http addr", func(c *worker.Config) { c.TLSCert, c.TLSKey, c.ClientCA, c.HTTPPlain = cert, key, caFile, true }, []string{"--tls-cert: set, but --http-addr is empty", "--tls-key: set, but", "--client-ca: set, but", "--http-plain: set, but --http-addr is empty"}},
		{"sources", func(c *worker.Config) { c.Sources = sources }, nil},
		{"sources missing", func(c *worker.Config) { c.Sources = missing }, []string{"--sources: sources file: open " + missing}},
		{"sources unknown field", func(c *worker.Config) { c.Sources = badSources }, []string{"--sources: sources file " + badSources + ":"}},
		{"docker config", func(c *worker.Config) { c.DockerConfig = dockerCfg }, nil},
		{"docker config missing", func(c *worker.Config) { c.DockerConfig = missing }, []string{"--docker-config: docker config: stat " + missing}},
		{"docker config not JSON", func(c *worker.Config) { c.DockerConfig = badDocker }, []string{"--docker-config:"}},
		{"deny CIDR", func(c *worker.Config) { c.DenyCIDRs = []string{"10.0.0.0/8", "nope"} }, []string{`--deny-cidrs: deny CIDR "nope"`}},
		{"allow pattern", func(c *worker.Config) { c.AllowRegistries = []string{"[ghcr.io"} }, []string{`--allow-registries: allowed registry pattern "[ghcr.io"`}},
		{"everything at once", func(c *worker.Config) {
			c.CacheTTL, c.HTTPAddr, c.RedisURL, c.Sources = -1, ":8443", "nope", missing
		}, []string{"--cache-ttl", "--redis-url", "--http-addr", "--sources"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := worker.Defaults()
			tc.set(&cfg)
			err := cfg.Validate()
			probs := worker.Problems(err)
			if len(probs) != len(tc.want) {
				t.Fatalf("%d problems, want %d:\n%v", len(probs), len(tc.want), err)
			}
			lines := strings.Split(strings.TrimSpace(errString(err)), "\n")
			for i, want := range tc.want {
				if !strings.Contains(probs[i].Error(), want) || lines[i] != probs[i].Error() {
					t.Errorf("problem %d: %q, want it to contain %q", i, probs[i].Error(), want)
				}
				if !strings.HasPrefix(probs[i].Error(), probs[i].Flag+": ") || !strings.HasPrefix(probs[i].Flag, "--") {
					t.Errorf("problem %d does not start with its flag: %q", i, probs[i].Error())
				}
				if strings.Contains(probs[i].Error(), "secret") || strings.Contains(probs[i].Error(), "hunter2") {
					t.Errorf("a password in %q", probs[i].Error())
				}
			}
		})
	}
}

// TestFlagsValidate: the log settings are checked with the rest.
func TestFlagsValidate(t *testing.T) {
	f := worker.DefaultFlags()
	f.LogLevel, f.LogFormat, f.Concurrency = "loud", "xml", -1
	probs := worker.Problems(f.Validate())
	var got []string
	for _, p := range probs {
		got = append(got, p.Flag)
	}
	if strings.Join(got, " ") != "--log-level --log-format --concurrency" {
		t.Fatalf("problems for %v, want --log-level --log-format --concurrency", got)
	}
	var fe *worker.FieldError
	if !errors.As(f.Validate(), &fe) {
		t.Fatal("not a *FieldError")
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
