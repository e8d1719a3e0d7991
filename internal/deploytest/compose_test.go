package deploytest

import (
	"bytes"
	"cmp"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/regcap/regcap/internal/testenv"
)

const root = "../.."

type compose struct {
	Services map[string]struct {
		Image string `yaml:"image"`
		Build *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Command     []string          `yaml:"command"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Deploy      struct {
			Replicas int `yaml:"replicas"`
		} `yaml:"deploy"`
		Healthcheck *struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
		DependsOn map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
	} `yaml:"services"`
}

// workerFlags returns the flags `worker --help` lists, from a fresh build.
func workerFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, "--help")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("worker --help: %v\n%s", err, out.String())
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  --([a-z0-9-]+)`).FindAllStringSubmatch(out.String(), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 10 {
		t.Fatalf("found only %d flags in worker --help:\n%s", len(flags), out.String())
	}
	return flags
}

func checkFlags(t *testing.T, where string, args []string, flags map[string]bool) {
	t.Helper()
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name := strings.SplitN(strings.TrimPrefix(a, "--"), "=", 2)[0]
		if !flags[name] {
			t.Errorf("%s uses --%s, which worker --help does not list", where, name)
		}
	}
}

// TestComposeFile parses docker-compose.yaml (no engine is available to
// run `docker compose config`) and checks that it is the stack the docs
// promise and that everything it names exists.
func TestComposeFile(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(root, "docker-compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	flags := workerFlags(t, testenv.BuildCommand(t, "worker"))

	for _, name := range []string{"nats", "redis", "registry", "worker"} {
		s, ok := c.Services[name]
		if !ok {
			t.Fatalf("service %q missing", name)
		}
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %q has neither image nor build", name)
		}
		if s.Healthcheck == nil || len(s.Healthcheck.Test) == 0 {
			t.Errorf("service %q has no healthcheck", name)
		}
	}
	nats := c.Services["nats"]
	if strings.Contains(strings.Join(nats.Command, " "), "jetstream") || strings.Contains(strings.Join(nats.Command, " "), "-js") {
		t.Errorf("nats enables JetStream, which regcap does not use: %v", nats.Command)
	}
	if !strings.Contains(strings.Join(nats.Command, " "), "8222") {
		t.Errorf("nats does not serve monitoring on 8222: %v", nats.Command)
	}
	if img := c.Services["registry"].Image; !strings.HasPrefix(img, "registry:2") {
		t.Errorf("registry image %q, want registry:2", img)
	}

	w := c.Services["worker"]
	if w.Deploy.Replicas != 3 {
		t.Errorf("worker replicas %d, want 3", w.Deploy.Replicas)
	}
	if w.Build == nil {
		t.Fatal("worker is not built from the Dockerfile")
	}
	if _, err := os.Stat(filepath.Join(root, w.Build.Context, w.Build.Dockerfile)); err != nil {
		t.Errorf("worker build: %v", err)
	}
	checkFlags(t, "worker command", w.Command, flags)
	// Bind-mounted files exist, and flags pointing into a mount name a
	// mounted file.
	mounted := map[string]bool{}
	for _, v := range w.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || !strings.HasPrefix(parts[0], ".") {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, parts[0])); err != nil {
			t.Errorf("worker volume %s: %v", v, err)
		}
		mounted[parts[1]] = true
	}
	for _, a := range w.Command {
		if v, ok := strings.CutPrefix(a, "--sources="); ok && !mounted[v] {
			t.Errorf("worker --sources=%s is not a mounted file", v)
		}
	}
	checkFlags(t, "worker healthcheck", w.Healthcheck.Test, flags)
	if !strings.Contains(strings.Join(w.Healthcheck.Test, " "), "/readyz") {
		t.Errorf("worker healthcheck does not ask /readyz: %v", w.Healthcheck.Test)
	}
	for _, dep := range []string{"nats", "redis"} {
		if w.DependsOn[dep].Condition != "service_healthy" {
			t.Errorf("worker does not wait for %s to be healthy", dep)
		}
	}
	// Environment variables are flags too.
	for k, v := range w.Environment {
		switch k {
		case "NATS_URL":
			if !strings.Contains(v, "nats:4222") {
				t.Errorf("NATS_URL %q does not name the nats service", v)
			}
		case "REDIS_URL":
			if !strings.Contains(v, "redis:6379") {
				t.Errorf("REDIS_URL %q does not name the redis service", v)
			}
		default:
			name := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, "REGCAP_")), "_", "-")
			if !strings.HasPrefix(k, "REGCAP_") || !flags[name] {
				t.Errorf("worker environment %s is not a worker flag", k)
			}
		}
	}
	// The requester tool runs the image's requester binary.
	if r, ok := c.Services["requester"]; ok {
		checkBinaryInImage(t, r.Entrypoint)
	}
}

// checkBinaryInImage checks that a path the compose file runs is one the
// Dockerfile copies into the image.
func checkBinaryInImage(t *testing.T, entry []string) {
	t.Helper()
	if len(entry) == 0 {
		return
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Base(entry[0])
	if !regexp.MustCompile(`(?m)^COPY --from=build .*\b` + regexp.QuoteMeta(bin) + `\b.* ` + regexp.QuoteMeta(filepath.Dir(entry[0])) + `/?$`).Match(df) {
		t.Errorf("%s is not copied into the image by the Dockerfile", entry[0])
	}
}

// TestDockerfile checks the build stages refer to packages that exist, the
// binaries are static and the image runs as non-root.
func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(df)
	if n := strings.Count(s, "\nFROM "); n < 2 {
		t.Errorf("want a multi-stage build, found %d FROM lines", n)
	}
	if !strings.Contains(s, "CGO_ENABLED=0") {
		t.Error("binaries are not built with CGO_ENABLED=0")
	}
	if !strings.Contains(s, "distroless/static") || !strings.Contains(s, "nonroot") {
		t.Error("runtime image is not distroless/static nonroot")
	}
	if !regexp.MustCompile(`(?m)^USER nonroot`).MatchString(s) {
		t.Error("no USER nonroot")
	}
	for _, m := range regexp.MustCompile(`\./cmd/[a-z]+`).FindAllString(s, -1) {
		if _, err := os.Stat(filepath.Join(root, m, "main.go")); err != nil {
			t.Errorf("Dockerfile builds %s: %v", m, err)
		}
	}
	for _, f := range []string{"go.mod", "go.sum"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("Dockerfile copies %s: %v", f, err)
		}
	}
	checkBinaryInImage(t, []string{"/usr/local/bin/worker"})
	checkBinaryInImage(t, []string{"/usr/local/bin/requester"})
}

// TestComposeBuildsOneImage: every service running regcap runs one
// image, built once from the Dockerfile, with VERSION exported or not
// (Compose's ${VERSION:-dev} resolved both ways, as Compose would). The
// services that do not build it depend on the one that does, so that
// `docker compose run` builds before it runs, and never try to pull it.
func TestComposeBuildsOneImage(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(root, "docker-compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, version := range []string{"", "v1.2.3-4-gabcdef0"} {
		t.Run("VERSION="+version, func(t *testing.T) {
			var c struct {
				Services map[string]struct {
					Image      string         `yaml:"image"`
					Build      map[string]any `yaml:"build"`
					PullPolicy string         `yaml:"pull_policy"`
					Entrypoint []string       `yaml:"entrypoint"`
					DependsOn  map[string]any `yaml:"depends_on"`
				} `yaml:"services"`
			}
			env := map[string]string{}
			if version != "" {
				env["VERSION"] = version
			}
			if err := yaml.Unmarshal([]byte(interpolate(t, string(raw), env)), &c); err != nil {
				t.Fatalf("docker-compose.yaml: %v", err)
			}
			want := "regcap:" + cmp.Or(version, "dev")
			var builders, users []string
			for name, s := range c.Services {
				ours := s.Build != nil || strings.HasPrefix(s.Image, "regcap")
				if !ours {
					continue
				}
				if s.Image != want {
					t.Errorf("service %s runs image %q, want %q", name, s.Image, want)
				}
				if s.Build != nil {
					builders = append(builders, name)
					if args, _ := s.Build["args"].(map[string]any); args["VERSION"] != cmp.Or(version, "dev") {
						t.Errorf("service %s builds with VERSION %v, want %q", name, args["VERSION"], cmp.Or(version, "dev"))
					}
					continue
				}
				users = append(users, name)
				if s.PullPolicy != "never" {
					t.Errorf("service %s: pull_policy %q: Compose would pull %s from Docker Hub before building it", name, s.PullPolicy, want)
				}
			}
			if len(builders) != 1 {
				t.Fatalf("services %v build the image, want exactly one", builders)
			}
			for _, u := range users {
				if _, ok := c.Services[u].DependsOn[builders[0]]; !ok {
					t.Errorf("service %s does not depend on %s, which builds its image", u, builders[0])
				}
			}
			if len(users) == 0 {
				t.Error("no service but the builder runs the image: where is the requester?")
			}
		})
	}
}

// interpolate resolves Compose's ${VAR}, ${VAR:-default} and ${VAR-default}
// from env; any other form of $ is an error.
func interpolate(t *testing.T, s string, env map[string]string) string {
	t.Helper()
	re := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}`)
	out := re.ReplaceAllStringFunc(s, func(m string) string {
		p := re.FindStringSubmatch(m)
		v, set := env[p[1]]
		switch {
		case p[2] == ":-" && v == "", p[2] == "-" && !set:
			return p[3]
		}
		return v
	})
	// $$ is a literal $; a lone $ left in a value Compose would read too.
	for _, line := range strings.Split(out, "\n") {
		if l, _, _ := strings.Cut(line, "#"); strings.Contains(strings.ReplaceAll(l, "$$", ""), "$") {
			t.Errorf("docker-compose.yaml: a variable this test cannot resolve: %s", line)
		}
	}
	return out
}
