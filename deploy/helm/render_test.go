package helm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const chartDir = "regcap"

// rendered is one chart rendering, decoded.
type rendered struct {
	Deployment     *appsv1.Deployment
	Service        *corev1.Service
	ServiceAccount *corev1.ServiceAccount
	ConfigMaps     map[string]*corev1.ConfigMap
	PDB            *policyv1.PodDisruptionBudget
	HPA            *autoscalingv2.HorizontalPodAutoscaler
	ServiceMonitor *serviceMonitor
	PrometheusRule *monitoringv1.PrometheusRule
}

// serviceMonitor is the part of prometheus-operator's ServiceMonitor the
// chart sets; it has no type in k8s.io/api, and a field the chart sets
// that this does not know fails the strict decoding.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// render renders the chart with vals as Helm install does, and decodes
// every object strictly (an unknown field is an error) into its type.
func render(t *testing.T, vals map[string]any) *rendered {
	t.Helper()
	files, err := renderFiles(vals)
	if err != nil {
		t.Fatalf("rendering: %v", err)
	}
	r := &rendered{ConfigMaps: map[string]*corev1.ConfigMap{}}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") {
			continue // NOTES.txt, helpers
		}
		for _, doc := range strings.Split(files[name], "\n---") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			if err := r.decode([]byte(doc)); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
		}
	}
	if r.Deployment == nil {
		t.Fatal("no Deployment rendered")
	}
	return r
}

func renderFiles(vals map[string]any) (map[string]string, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, err
	}
	rv, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: "regcap", Namespace: "regcap", IsInstall: true}, nil)
	if err != nil {
		return nil, err
	}
	return engine.Render(ch, rv)
}

// decode decodes one object strictly into the type of its kind.
func (r *rendered) decode(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var into any
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		r.Deployment = &appsv1.Deployment{}
		into = r.Deployment
	case "v1 Service":
		r.Service = &corev1.Service{}
		into = r.Service
	case "v1 ServiceAccount":
		r.ServiceAccount = &corev1.ServiceAccount{}
		into = r.ServiceAccount
	case "v1 ConfigMap":
		cm := &corev1.ConfigMap{}
		defer func() { r.ConfigMaps[cm.Name] = cm }()
		into = cm
	case "policy/v1 PodDisruptionBudget":
		r.PDB = &policyv1.PodDisruptionBudget{}
		into = r.PDB
	case "autoscaling/v2 HorizontalPodAutoscaler":
		r.HPA = &autoscalingv2.HorizontalPodAutoscaler{}
		into = r.HPA
	case "monitoring.coreos.com/v1 ServiceMonitor":
		r.ServiceMonitor = &serviceMonitor{}
		into = r.ServiceMonitor
	case "monitoring.coreos.com/v1 PrometheusRule":
		r.PrometheusRule = &monitoringv1.PrometheusRule{}
		into = r.PrometheusRule
	default:
		return fmt.Errorf("unknown kind %s %s", tm.APIVersion, tm.Kind)
	}
	return yaml.UnmarshalStrict(doc, into)
}

// container is the worker's container.
func (r *rendered) container(t *testing.T) corev1.Container {
	t.Helper()
	cs := r.Deployment.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("%d containers, want the worker alone", len(cs))
	}
	return cs[0]
}

// valueSets are the values the tests render with: the defaults, and
// everything turned on.
var valueSets = []struct {
	name string
	vals map[string]any
}{
	{"defaults", nil},
	{"everything", mustValues(`
replicaCount: 5
nats: {existingSecret: regcap-nats, secretKey: urls}
redis: {existingSecret: regcap-redis, secretKey: url, mode: sentinel}
cacheKey: {existingSecret: regcap-cache-key, secretKey: key}
registryCredentials: {existingSecret: regcap-pull-secret}
sources:
  insecure_sources: [registry.local:5000]
config: {platform: linux/arm64}
mirrors: {hostsDir: /etc/containerd/certs.d, registriesConf: /etc/containers/registries.conf, mirrorsOnly: true}
httpFront: {enabled: true, tlsSecret: regcap-tls, clientCASecret: gatekeeper-ca}
metrics:
  serviceMonitor: {enabled: true, labels: {release: prometheus}}
  dashboard: {enabled: true, annotations: {grafana_folder: regcap}}
  prometheusRule: {enabled: true, labels: {release: prometheus}}
autoscaling: {enabled: true}
extraArgs: [--negative-ttl=30s]
extraEnv: [{name: REGCAP_LOCK_WAIT, value: 5s}]
imagePullSecrets: [{name: ghcr}]
`)},
	{"plain redis URL, no PDB", mustValues(`
redis: {url: "redis://redis:6379"}
podDisruptionBudget: {enabled: false}
`)},
}

func mustValues(s string) map[string]any {
	var v map[string]any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		panic(err)
	}
	return v
}

// TestChartLints runs Helm's own linter, as `helm lint` does, with each
// value set: an error or a warning fails.
func TestChartLints(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			l := lint.RunAll(chartDir, vs.vals, "regcap")
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("helm lint: %s", m)
				}
			}
		})
	}
}

// TestChartRendersStrictly renders each value set and decodes every
// object into its Kubernetes type, refusing unknown fields.
func TestChartRendersStrictly(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			r := render(t, vs.vals)
			_, hpa := vs.vals["autoscaling"]
			if hpa != (r.HPA != nil) {
				t.Errorf("HPA rendered: %v, want %v", r.HPA != nil, hpa)
			}
		})
	}
}

// TestChartRefusesBadValues checks that values which cannot work stop
// the install with a message, instead of rendering a broken Deployment.
func TestChartRefusesBadValues(t *testing.T) {
	cases := []struct {
		name, vals, err string
	}{
		{"no NATS", `nats: {url: ""}`, "nats.url or nats.existingSecret is required"},
		{"HTTP front without TLS", `httpFront: {enabled: true}`, "needs httpFront.tlsSecret"},
		// values.schema.json: a misspelt or mistyped value stops the
		// install instead of being ignored.
		{"misspelt value", `replicacount: 5`, "replicacount"},
		{"unknown Redis mode", `redis: {mode: ring}`, "mode"},
		{"not a duration", `config: {cacheTTL: soon}`, "cacheTTL"},
		{"argument without dashes", `extraArgs: [cache-ttl=1m]`, "extraArgs"},
		{"a string for a number", `replicaCount: "3"`, "replicaCount"},
		{"air-gapped without mirrors", `mirrors: {mirrorsOnly: true}`, "mirrors.mirrorsOnly needs"},
		{"relative hosts dir", `mirrors: {hostsDir: etc/certs.d}`, "hostsDir"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := renderFiles(mustValues(tc.vals))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err %v, want one saying %q", err, tc.err)
			}
		})
	}
}

// workerHelp is the worker's --help: its flag names and environment
// variables, from a build of ../../cmd/worker.
var workerHelp = sync.OnceValues(func() (help, error) {
	dir, err := filepath.Abs("../..")
	if err != nil {
		return help{}, err
	}
	bin := filepath.Join(tmpDir, "worker")
	build := exec.Command("go", "build", "-o", bin, "./cmd/worker")
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		return help{}, fmt.Errorf("building the worker: %v\n%s", err, out)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "--help")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return help{}, fmt.Errorf("worker --help: %v\n%s", err, out.String())
	}
	h := help{flags: map[string]bool{}, env: map[string]bool{}}
	for _, m := range regexp.MustCompile(`(?m)^\s+--([a-z0-9-]+)`).FindAllStringSubmatch(out.String(), -1) {
		h.flags[m[1]] = true
	}
	for _, m := range regexp.MustCompile(`(?m)^\s+env ([A-Z0-9_]+)`).FindAllStringSubmatch(out.String(), -1) {
		h.env[m[1]] = true
	}
	if len(h.flags) < 20 || len(h.env) < 20 {
		return help{}, fmt.Errorf("read %d flags and %d variables from worker --help:\n%s", len(h.flags), len(h.env), out.String())
	}
	return h, nil
})

type help struct{ flags, env map[string]bool }

// jsonOf is v as JSON, for messages.
func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
