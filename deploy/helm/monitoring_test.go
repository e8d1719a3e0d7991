package helm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"

	"github.com/regcap/regcap/client"
	"github.com/regcap/regcap/contract"
	"github.com/regcap/regcap/internal/testenv"
	"github.com/regcap/regcap/internal/testworker"
	"github.com/regcap/regcap/internal/worker"
)

// monitoringValues turn on the dashboard and the alerts.
var monitoringValues = mustValues(`
metrics:
  serviceMonitor: {enabled: true}
  dashboard: {enabled: true}
  prometheusRule: {enabled: true, labels: {release: prometheus}, additionalLabels: {team: platform}}
`)

// targetLabels are the labels Prometheus gives every series of a
// target it scrapes (the ServiceMonitor's), not the worker.
var targetLabels = map[string]bool{"namespace": true, "pod": true, "job": true, "instance": true, "service": true, "container": true, "endpoint": true}

// promql is Prometheus's PromQL parser, with its default options.
var promql = parser.NewParser(parser.Options{})

// severities are the severity labels the alerts may carry.
var severities = []string{"critical", "warning", "info"}

// query is one PromQL expression and where it comes from, for messages.
type query struct{ where, expr string }

// TestDashboardAndAlertsMetricsExist renders the chart with the
// dashboard and the alerts on, parses every PromQL expression they hold
// with Prometheus's own parser, and checks each metric, label and label
// value they name against the /metrics of a running worker that has
// answered hits, misses, a 404, a rate-limited registry, a stale answer
// and Redis failing in three ways, and holds a fetch in flight, so that
// its lazily made series exist.
func TestDashboardAndAlertsMetricsExist(t *testing.T) {
	testenv.Long(t, "starts a worker, Redis, NATS and a registry")
	r := render(t, monitoringValues)
	queries := append(dashboardQueries(t, r), alertQueries(t, r)...)
	if len(queries) < 30 {
		t.Fatalf("only %d queries found in the dashboard and the alerts", len(queries))
	}
	exposed := scrapeBusyWorker(t)
	for _, q := range queries {
		for _, err := range checkQuery(q.expr, exposed) {
			t.Errorf("%s: %v\n\t%s", q.where, err, q.expr)
		}
	}
}

// TestMonitoringOffByDefault: neither object is rendered unless asked
// for, since the PrometheusRule needs the operator's CRDs and the
// dashboard Grafana's sidecar.
func TestMonitoringOffByDefault(t *testing.T) {
	r := render(t, nil)
	if r.PrometheusRule != nil {
		t.Error("a PrometheusRule is rendered by default")
	}
	if _, ok := r.ConfigMaps["regcap-dashboard"]; ok {
		t.Error("the dashboard ConfigMap is rendered by default")
	}
}

// TestPrometheusRuleIsValid checks the rendered PrometheusRule as the
// operator and Prometheus would: it decodes strictly into the operator's
// own type, its groups pass Prometheus's rule-file validation (rulefmt:
// names, durations, label names, annotation templates), and every alert
// carries a severity, a summary, a description, a runbook and a
// runbook_url whose anchor is a heading of docs/dashboards.md.
func TestPrometheusRuleIsValid(t *testing.T) {
	r := render(t, monitoringValues)
	pr := r.PrometheusRule
	if pr == nil {
		t.Fatal("no PrometheusRule rendered")
	}
	if pr.Labels["release"] != "prometheus" {
		t.Errorf("labels %v: metrics.prometheusRule.labels not applied", pr.Labels)
	}
	// Prometheus's own validation of the same groups, as in a rule file.
	groups, err := json.Marshal(struct {
		Groups []monitoringv1.RuleGroup `json:"groups"`
	}{pr.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	groupsYAML, err := yaml.JSONToYAML(groups)
	if err != nil {
		t.Fatal(err)
	}
	if _, errs := rulefmt.Parse(groupsYAML, false, model.UTF8Validation, promql, slog.New(slog.DiscardHandler)); len(errs) > 0 {
		t.Errorf("rulefmt refuses the rules: %v\n%s", errors.Join(errs...), groupsYAML)
	}

	docs, err := os.ReadFile("../../docs/dashboards.md")
	if err != nil {
		t.Fatal(err)
	}
	headings := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^#+ (.+)$`).FindAllStringSubmatch(string(docs), -1) {
		headings[strings.ToLower(strings.TrimSpace(m[1]))] = true
	}

	seen := map[string]bool{}
	for _, g := range pr.Spec.Groups {
		if len(g.Rules) < 10 {
			t.Errorf("group %s has %d rules", g.Name, len(g.Rules))
		}
		for _, rule := range g.Rules {
			name := rule.Alert
			switch {
			case !regexp.MustCompile(`^Regcap[A-Z][A-Za-z]+$`).MatchString(name):
				t.Errorf("alert %q: want RegcapSomething", name)
			case seen[name]:
				t.Errorf("alert %s twice", name)
			}
			seen[name] = true
			if rule.For != nil {
				if _, err := model.ParseDuration(string(*rule.For)); err != nil {
					t.Errorf("%s: for %q: %v", name, *rule.For, err)
				}
			}
			if !slices.Contains(severities, rule.Labels["severity"]) {
				t.Errorf("%s: severity %q, want one of %v", name, rule.Labels["severity"], severities)
			}
			if rule.Labels["team"] != "platform" {
				t.Errorf("%s: labels %v, additionalLabels not applied", name, rule.Labels)
			}
			for _, a := range []string{"summary", "description", "runbook", "runbook_url"} {
				if strings.TrimSpace(rule.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", name, a)
				}
			}
			base, anchor, _ := strings.Cut(rule.Annotations["runbook_url"], "#")
			if !strings.HasSuffix(base, "/docs/dashboards.md") || anchor != strings.ToLower(name) || !headings[anchor] {
				t.Errorf("%s: runbook_url %s, want docs/dashboards.md#%s and that heading in it", name, rule.Annotations["runbook_url"], strings.ToLower(name))
			}
			if !strings.Contains(rule.Expr.String(), `namespace="regcap"`) {
				t.Errorf("%s: expr does not select the release's namespace: %s", name, rule.Expr.String())
			}
		}
	}
	for _, want := range []string{"RegcapRedisUnavailable", "RegcapRegistryFailing", "RegcapRegistryRateLimited", "RegcapServingStale",
		"RegcapOverloaded", "RegcapAnswersTooLarge", "RegcapRedisRefusingWrites", "RegcapRedisValuesRejected", "RegcapRedisValuesForged"} {
		if !seen[want] {
			t.Errorf("no alert %s", want)
		}
	}
}

// TestPrometheusRuleValues: selector, disabled and a misspelt alert name.
func TestPrometheusRuleValues(t *testing.T) {
	r := render(t, mustValues(`
metrics:
  prometheusRule:
    enabled: true
    selector: 'kubernetes_namespace="apps",app="regcap"'
    disabled: [RegcapAnswersTooLarge]
`))
	for _, rule := range r.PrometheusRule.Spec.Groups[0].Rules {
		if rule.Alert == "RegcapAnswersTooLarge" {
			t.Error("a disabled alert is rendered")
		}
		e := rule.Expr.String()
		if _, err := promql.ParseExpr(e); err != nil {
			t.Errorf("%s: %v\n%s", rule.Alert, err, e)
		}
		if !strings.Contains(e, `kubernetes_namespace="apps",app="regcap"`) || strings.Contains(e, "SELECTOR") || strings.Contains(e, `namespace="regcap"`) {
			t.Errorf("%s: selector not applied: %s", rule.Alert, e)
		}
	}
	// An empty selector is the release's namespace.
	r = render(t, mustValues(`metrics: {prometheusRule: {enabled: true, selector: ""}}`))
	for _, rule := range r.PrometheusRule.Spec.Groups[0].Rules {
		if e := rule.Expr.String(); !strings.Contains(e, `namespace="regcap"`) {
			t.Errorf("%s: an empty selector is not the release's namespace: %s", rule.Alert, e)
		}
	}
	_, err := renderFiles(mustValues(`metrics: {prometheusRule: {enabled: true, disabled: [RegcapRedisDown]}}`))
	if err == nil || !strings.Contains(err.Error(), "RegcapRedisDown") {
		t.Errorf("a misspelt alert in disabled: err %v, want one naming it", err)
	}
}

// dashboardQueries returns the PromQL of every panel target and template
// variable of the rendered dashboard, Grafana's variables replaced.
func dashboardQueries(t *testing.T, r *rendered) []query {
	t.Helper()
	cm, ok := r.ConfigMaps["regcap-dashboard"]
	if !ok {
		t.Fatalf("no dashboard ConfigMap; have %v", keys(r.ConfigMaps))
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard labels %v: no grafana_dashboard: \"1\" for the sidecar", cm.Labels)
	}
	var d struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Type       string `json:"type"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Panels []dashPanel `json:"panels"`
	}
	if err := json.Unmarshal([]byte(cm.Data["regcap.json"]), &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard without uid or title")
	}
	var qs []query
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type != "query" {
			continue
		}
		m := regexp.MustCompile(`^label_values\((.+),\s*([a-z_]+)\)$`).FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(selector, label)", v.Name, v.Definition)
			continue
		}
		qs = append(qs, query{"variable " + v.Name, grafanaVars(t, m[1])})
	}
	for _, v := range []string{"datasource", "namespace", "pod"} {
		if !vars[v] {
			t.Errorf("dashboard has no $%s variable", v)
		}
	}
	var walk func([]dashPanel)
	ids := map[int]bool{}
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d twice", p.ID)
			}
			ids[p.ID] = true
			if p.Type != "row" && (len(p.Targets) == 0 || p.Description == "") {
				t.Errorf("panel %q: %d targets, description %q", p.Title, len(p.Targets), p.Description)
			}
			for _, tg := range p.Targets {
				qs = append(qs, query{fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), grafanaVars(t, tg.Expr)})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return qs
}

type dashPanel struct {
	ID          int         `json:"id"`
	Type        string      `json:"type"`
	Title       string      `json:"title"`
	Description string      `json:"description"`
	Panels      []dashPanel `json:"panels"`
	Targets     []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// grafanaVars replaces the Grafana variables a query may hold with what
// they stand for, so that Prometheus's parser reads it; any other
// variable is an error.
func grafanaVars(t *testing.T, expr string) string {
	t.Helper()
	out := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$namespace", ".*", "$pod", ".*").Replace(expr)
	if strings.Contains(out, "$") {
		t.Errorf("unknown Grafana variable in %s", expr)
	}
	return out
}

// alertQueries returns the expr of every rendered alert.
func alertQueries(t *testing.T, r *rendered) []query {
	t.Helper()
	if r.PrometheusRule == nil {
		t.Fatal("no PrometheusRule rendered")
	}
	var qs []query
	for _, g := range r.PrometheusRule.Spec.Groups {
		for _, rule := range g.Rules {
			qs = append(qs, query{"alert " + rule.Alert, rule.Expr.String()})
		}
	}
	return qs
}

// exposition is what a worker's /metrics holds, by sample name (a
// histogram's _bucket, _sum and _count each).
type exposition map[string]*series

type series struct {
	help   string
	labels map[string]map[string]bool // label name → values seen
}

// checkQuery parses expr and checks every metric it selects, every
// label its matchers and groupings name, and every label value it
// matches, against what a worker exposes.
func checkQuery(expr string, exp exposition) []error {
	e, err := promql.ParseExpr(expr)
	if err != nil {
		return []error{err}
	}
	var errs []error
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			s, ok := exp[n.Name]
			if !ok {
				errs = append(errs, fmt.Errorf("metric %s: not in the worker's /metrics", n.Name))
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name == model.MetricNameLabel || targetLabels[m.Name] {
					continue
				}
				if _, ok := s.labels[m.Name]; !ok {
					errs = append(errs, fmt.Errorf("%s has no label %s (it has %v)", n.Name, m.Name, keys(s.labels)))
					continue
				}
				if err := checkValue(n.Name, m.Name, m.Value, m.Type.String(), s); err != nil {
					errs = append(errs, err)
				}
			}
		case *parser.AggregateExpr:
			labels := map[string]bool{"le": true}
			parser.Inspect(n.Expr, func(inner parser.Node, _ []parser.Node) error {
				if vs, ok := inner.(*parser.VectorSelector); ok {
					if s, ok := exp[vs.Name]; ok {
						for l := range s.labels {
							labels[l] = true
						}
					}
				}
				return nil
			})
			for _, l := range n.Grouping {
				if !labels[l] && !targetLabels[l] {
					errs = append(errs, fmt.Errorf("%s by (%s): no metric below it has the label %s", n.Op, strings.Join(n.Grouping, ", "), l))
				}
			}
		}
		return nil
	})
	return errs
}

// checkValue checks a matcher's value: a value the worker exposes, one
// its HELP text names, a contract code for code, an HTTP status or
// "error" for status. A regular expression of literal alternatives has
// each checked; any other must match some value.
func checkValue(metric, label, value, op string, s *series) error {
	known := func(v string) bool {
		switch {
		case s.labels[label][v]:
			return true
		case label == "code":
			c, err := strconv.Atoi(v)
			return err == nil && (c == 200 || contract.ValidCode(c))
		case label == "status":
			c, err := strconv.Atoi(v)
			return v == "error" || err == nil && c >= 100 && c <= 599
		}
		return regexp.MustCompile(`\b` + regexp.QuoteMeta(v) + `\b`).MatchString(s.help)
	}
	if op == "=" || op == "!=" {
		if !known(value) {
			return fmt.Errorf("%s{%s%s%q}: the worker never gives %s that value", metric, label, op, value, label)
		}
		return nil
	}
	for _, alt := range strings.Split(value, "|") {
		if regexp.MustCompile(`^[A-Za-z0-9_]+$`).MatchString(alt) {
			if !known(alt) {
				return fmt.Errorf("%s{%s%s%q}: the worker never gives %s the value %s", metric, label, op, value, label, alt)
			}
			continue
		}
		re := regexp.MustCompile("^(?:" + alt + ")$")
		candidates := keys(s.labels[label])
		if label == "code" || label == "status" {
			for _, c := range contract.Codes() {
				candidates = append(candidates, strconv.Itoa(c))
			}
		}
		if !slices.ContainsFunc(candidates, re.MatchString) {
			return fmt.Errorf("%s{%s%s%q}: %s matches no value of %s (%v)", metric, label, op, value, alt, label, candidates)
		}
	}
	return nil
}

// scrapeBusyWorker starts a worker with Redis, NATS and a registry, asks
// it what makes every lazily made series appear, and returns its
// /metrics as scraped over HTTP.
func scrapeBusyWorker(t *testing.T) exposition {
	t.Helper()
	testenv.QuietRedisLogs()
	rd := testenv.StartRedis(t)
	ns := testenv.StartNATS(t)
	reg := testenv.StartRegistry(t)
	w := testworker.Start(t, testworker.Config{NATSURL: ns.ClientURL(), RedisAddr: rd.Addr(), Config: worker.Config{
		MetricsAddr: "127.0.0.1:0",
		// Short, so that the stale answer below comes within a second.
		CacheTTL:     500 * time.Millisecond,
		StaleIfError: time.Hour,
	}})
	cli := testenv.Client(t, ns.ClientURL())
	ctx := context.Background()
	ask := func(fn contract.Function, ref string, wantCode int) *client.Reply {
		t.Helper()
		rep, err := cli.Image(ctx, fn, ref)
		var ce *contract.Error
		switch {
		case wantCode == 0 && err != nil:
			t.Fatalf("%s %s: %v", fn, ref, err)
		case wantCode != 0 && (!errors.As(err, &ce) || ce.Code != wantCode):
			t.Fatalf("%s %s: %v, want a %d", fn, ref, err, wantCode)
		}
		return rep
	}

	// Hits and misses of the three functions, and a 404.
	reg.PushImage(t, "app", "v1", testenv.OCIManifest, "linux/amd64")
	for _, fn := range contract.Functions() {
		ask(fn, reg.Ref("app", "v1"), 0)
		ask(fn, reg.Ref("app", "v1"), 0)
	}
	ask(contract.ManifestDigest, reg.Ref("app", "nope"), 404)

	// A registry that rate-limits: 429 upstream and to the caller.
	reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/limited/") }, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "30")
		http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS"}]}`, http.StatusTooManyRequests)
	}))
	ask(contract.ManifestDigest, reg.Ref("limited", "v1"), 429)

	// A stale answer: cached, expired, then the registry fails.
	reg.PushImage(t, "flaky", "v1", testenv.OCIManifest, "linux/amd64")
	ask(contract.OCIManifest, reg.Ref("flaky", "v1"), 0)
	time.Sleep(time.Second) // past the TTL and its jitter
	reg.Override(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/flaky/") }, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	if rep := ask(contract.OCIManifest, reg.Ref("flaky", "v1"), 0); rep.Cache != contract.Stale {
		t.Fatalf("after the registry failed: %s answer, want stale", rep.Cache)
	}

	// A value in Redis that is not the fleet's: refused, answered as a miss.
	rdb := rd.Client(t)
	reg.PushImage(t, "forged", "v1", testenv.OCIManifest, "linux/amd64")
	testenv.Must(t, rdb.Set(ctx, "regcap:v2:oci_manifest:"+reg.Ref("forged", "v1"), "not a value of regcap's", time.Minute).Err(), "writing a forged value")
	ask(contract.OCIManifest, reg.Ref("forged", "v1"), 0)

	// Redis out of memory: writes refused.
	testenv.Must(t, rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(), "CONFIG SET")
	testenv.Must(t, rdb.ConfigSet(ctx, "maxmemory", "1").Err(), "CONFIG SET")
	reg.PushImage(t, "full", "v1", testenv.OCIManifest, "linux/amd64")
	ask(contract.OCIManifest, reg.Ref("full", "v1"), 0)
	testenv.Must(t, rdb.ConfigSet(ctx, "maxmemory", "0").Err(), "CONFIG SET")

	// Redis gone: commands fail and are absorbed.
	rd.Stop()
	reg.PushImage(t, "outage", "v1", testenv.OCIManifest, "linux/amd64")
	ask(contract.OCIManifest, reg.Ref("outage", "v1"), 0)

	// A fetch held in flight: the per-registry gauges show the hosts
	// with fetches or resolutions pending, so scrape while one is.
	reg.PushImage(t, "held", "v1", testenv.OCIManifest, "linux/amd64")
	gate := reg.Hold("/held/")
	done := make(chan error, 1)
	go func() {
		_, err := cli.Image(ctx, contract.OCIManifest, reg.Ref("held", "v1"))
		done <- err
	}()
	<-gate.Arrived()
	resp, err := http.Get("http://" + w.MetricsAddr() + "/metrics")
	testenv.Must(t, err, "scraping /metrics")
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	testenv.Must(t, err, "reading /metrics")
	gate.Release()
	testenv.Must(t, <-done, "the held fetch")
	exp, err := parseExposition(string(body))
	testenv.Must(t, err, "parsing /metrics")
	// The series the scenario is for: if one is missing, the scenario no
	// longer makes it and the checks above would pass on HELP text alone.
	for _, want := range []struct{ metric, label, value string }{
		{"regcap_cache_total", "result", "stale"},
		{"regcap_upstream_requests_total", "status", "429"},
		{"regcap_requests_total", "code", "429"},
		{"regcap_redis_rejected_total", "reason", ""},
		{"regcap_redis_refused_total", "reason", "oom"},
		{"regcap_redis_errors_total", "op", ""},
		{"regcap_registry_fetch_limit", "registry", reg.Host},
	} {
		s, ok := exp[want.metric]
		if !ok || len(s.labels[want.label]) == 0 || want.value != "" && !s.labels[want.label][want.value] {
			t.Fatalf("the worker has no %s{%s=%q} after the scenario:\n%s", want.metric, want.label, want.value, grep(string(body), want.metric))
		}
	}
	return exp
}

// parseExposition reads a Prometheus text exposition with Prometheus's
// own parser.
func parseExposition(text string) (exposition, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, err
	}
	exp := exposition{}
	add := func(name, help string, m *dto.Metric) {
		s := exp[name]
		if s == nil {
			s = &series{help: help, labels: map[string]map[string]bool{}}
			exp[name] = s
		}
		for _, lp := range m.GetLabel() {
			if s.labels[lp.GetName()] == nil {
				s.labels[lp.GetName()] = map[string]bool{}
			}
			s.labels[lp.GetName()][lp.GetValue()] = true
		}
	}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				add(name+"_sum", f.GetHelp(), m)
				add(name+"_count", f.GetHelp(), m)
				add(name+"_bucket", f.GetHelp(), m)
				exp[name+"_bucket"].labels["le"] = map[string]bool{"+Inf": true}
			case dto.MetricType_SUMMARY:
				add(name+"_sum", f.GetHelp(), m)
				add(name+"_count", f.GetHelp(), m)
				add(name, f.GetHelp(), m)
			default:
				add(name, f.GetHelp(), m)
			}
		}
	}
	return exp, nil
}

func grep(s, what string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
