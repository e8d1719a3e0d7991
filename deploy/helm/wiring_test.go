package helm

import (
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// TestChartWiring checks, for each value set, that what the chart
// configures reaches the worker: every flag and variable is one the
// worker has, every mounted Secret and ConfigMap key is read by a flag,
// every selector selects the workers, and probes use a declared port.
func TestChartWiring(t *testing.T) {
	h, err := workerHelp()
	if err != nil {
		t.Fatal(err)
	}
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			r := render(t, vs.vals)
			c := r.container(t)
			pod := r.Deployment.Spec.Template

			// Flags and variables the worker knows; the paths flags name.
			paths := map[string]string{} // flag → the path it names
			for _, a := range c.Args {
				name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				if !strings.HasPrefix(a, "--") || !h.flags[name] {
					t.Errorf("argument %q: the worker has no flag --%s", a, name)
				}
				if strings.HasPrefix(value, "/") {
					paths[name] = value
				}
			}
			for _, e := range c.Env {
				if !h.env[e.Name] {
					t.Errorf("variable %s: the worker reads no such variable", e.Name)
				}
			}

			// Every volume is mounted, and every mounted key is a file a
			// flag points at.
			mounts := map[string]corev1.VolumeMount{}
			for _, m := range c.VolumeMounts {
				mounts[m.Name] = m
			}
			for _, v := range pod.Spec.Volumes {
				m, ok := mounts[v.Name]
				if !ok {
					t.Errorf("volume %s is not mounted", v.Name)
					continue
				}
				delete(mounts, v.Name)
				var items []corev1.KeyToPath
				switch {
				case v.Secret != nil:
					items = v.Secret.Items
				case v.ConfigMap != nil:
					items = v.ConfigMap.Items
					cm, ok := r.ConfigMaps[v.ConfigMap.Name]
					if !ok {
						t.Errorf("volume %s: ConfigMap %s is not rendered", v.Name, v.ConfigMap.Name)
						continue
					}
					for _, it := range items {
						if _, ok := cm.Data[it.Key]; !ok {
							t.Errorf("volume %s: ConfigMap %s has no key %s", v.Name, cm.Name, it.Key)
						}
					}
				case v.HostPath != nil:
					// A node's folder (mirrors): a flag names the folder
					// or a file directly in it.
					if !consumedFolder(m.MountPath, paths) {
						t.Errorf("volume %s: %s is read by no flag (flags name %v)", v.Name, m.MountPath, paths)
					}
					if !m.ReadOnly {
						t.Errorf("volume %s is mounted read-write", v.Name)
					}
					continue
				default:
					t.Errorf("volume %s: neither a Secret, a ConfigMap nor a node's folder", v.Name)
				}
				if len(items) == 0 {
					t.Errorf("volume %s mounts every key: list the ones the worker reads", v.Name)
				}
				for _, it := range items {
					file := m.MountPath + "/" + it.Path
					if !consumed(file, m.MountPath, paths) {
						t.Errorf("volume %s: %s (key %s) is read by no flag (flags name %v)", v.Name, file, it.Key, paths)
					}
				}
				if !m.ReadOnly {
					t.Errorf("volume %s is mounted read-write", v.Name)
				}
			}
			for name := range mounts {
				t.Errorf("mount %s has no volume", name)
			}
			for _, p := range paths {
				if !underMount(p, c.VolumeMounts) {
					t.Errorf("a flag names %s, which no volume provides", p)
				}
			}

			// Selectors select the pods.
			podLabels := labels.Set(pod.Labels)
			sel := r.Deployment.Spec.Selector.MatchLabels
			if !labels.SelectorFromSet(sel).Matches(podLabels) {
				t.Errorf("the Deployment's selector %v does not select its pods %v", sel, podLabels)
			}
			if !labels.SelectorFromSet(r.Service.Spec.Selector).Matches(podLabels) {
				t.Errorf("the Service's selector %v does not select the pods", r.Service.Spec.Selector)
			}
			if r.PDB != nil && !labels.SelectorFromSet(r.PDB.Spec.Selector.MatchLabels).Matches(podLabels) {
				t.Errorf("the PodDisruptionBudget's selector does not select the pods")
			}
			if r.ServiceMonitor != nil && !labels.SelectorFromSet(r.ServiceMonitor.Spec.Selector.MatchLabels).Matches(labels.Set(r.Service.Labels)) {
				t.Errorf("the ServiceMonitor does not select the Service")
			}

			// Ports: probes, the Service and the ServiceMonitor name ports
			// the container declares.
			ports := map[string]bool{}
			for _, p := range c.Ports {
				ports[p.Name] = true
			}
			for what, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
				if p == nil || p.HTTPGet == nil || !ports[p.HTTPGet.Port.String()] {
					t.Errorf("%s probe %s does not use a declared port", what, jsonOf(p))
				}
			}
			if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe != nil && c.LivenessProbe.HTTPGet.Path != "/healthz" {
				t.Errorf("probes on %s and %s, want /healthz and /readyz", c.LivenessProbe.HTTPGet.Path, c.ReadinessProbe.HTTPGet.Path)
			}
			svcPorts := map[string]bool{}
			for _, p := range r.Service.Spec.Ports {
				svcPorts[p.Name] = true
				if !ports[p.TargetPort.String()] {
					t.Errorf("Service port %s targets %s, which the container does not declare", p.Name, p.TargetPort.String())
				}
			}
			if r.ServiceMonitor != nil {
				for _, e := range r.ServiceMonitor.Spec.Endpoints {
					if !svcPorts[e.Port] {
						t.Errorf("ServiceMonitor scrapes port %s, which the Service does not have", e.Port)
					}
				}
			}

			// Shutdown: Kubernetes waits longer than the worker drains.
			drain := 25 * time.Second
			for _, a := range c.Args {
				if v, ok := strings.CutPrefix(a, "--shutdown-timeout="); ok {
					if drain, err = time.ParseDuration(v); err != nil {
						t.Errorf("--shutdown-timeout=%s: %v", v, err)
					}
				}
			}
			if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain {
				t.Errorf("terminationGracePeriodSeconds %v is not over --shutdown-timeout %v", g, drain)
			}
		})
	}
}

// folderFiles are the files a flag naming a folder reads in it.
var folderFiles = map[string][]string{
	"docker-config": {"config.json", ".dockerconfigjson"},
}

// consumed reports whether file, mounted under dir, is what a flag
// names: the file itself, or a file the flag reads in the folder.
func consumed(file, dir string, paths map[string]string) bool {
	for flag, p := range paths {
		if p == file || p == dir && slices.Contains(folderFiles[flag], path.Base(file)) {
			return true
		}
	}
	return false
}

// consumedFolder reports whether a flag names dir or a file directly in
// it.
func consumedFolder(dir string, paths map[string]string) bool {
	for _, p := range paths {
		if p == dir || path.Dir(p) == dir {
			return true
		}
	}
	return false
}

func underMount(p string, mounts []corev1.VolumeMount) bool {
	for _, m := range mounts {
		if p == m.MountPath || strings.HasPrefix(p, m.MountPath+"/") {
			return true
		}
	}
	return false
}

// TestChartHardening checks what a security review asks of the pods:
// non-root, read-only root filesystem, no privilege escalation, no
// capabilities, the runtime's seccomp profile, no API token, resources,
// more than one replica spread over nodes, and a disruption budget.
func TestChartHardening(t *testing.T) {
	r := render(t, nil)
	c := r.container(t)
	pod := r.Deployment.Spec.Template.Spec
	psc, sc := pod.SecurityContext, c.SecurityContext
	switch {
	case psc == nil || sc == nil:
		t.Fatal("no securityContext")
	case psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0:
		t.Error("pods may run as root")
	case psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Error("no RuntimeDefault seccomp profile")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("the root filesystem is writable")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("privilege escalation allowed")
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0:
		t.Errorf("capabilities %s, want all dropped", jsonOf(sc.Capabilities))
	case pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken:
		t.Error("the pods get a Kubernetes API token they never use")
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %s: want CPU and memory requests and a memory limit", jsonOf(c.Resources))
	}
	if n := r.Deployment.Spec.Replicas; n == nil || *n < 2 {
		t.Errorf("replicas %v: one worker is a single point of failure", n)
	}
	aa := pod.Affinity
	if aa == nil || aa.PodAntiAffinity == nil || len(aa.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 ||
		aa.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("affinity %s: want the workers spread over nodes", jsonOf(aa))
	}
	if r.PDB == nil || r.PDB.Spec.MaxUnavailable == nil || r.PDB.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PodDisruptionBudget %v: want one worker down at a time", r.PDB)
	}
}
