// Package prefetch warms a regcap fleet's cache for a list of images before
// an admission spike: it reads image lists and Kubernetes manifests, and
// runs the requests with bounded concurrency and retries, collecting a
// report of what was served from cache, fetched, or failed.
package prefetch

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"go.yaml.in/yaml/v3"
)

// ReadList reads image references, one per line. Blank lines and comments
// (from "#" to the end of the line) are ignored; surrounding space is
// trimmed.
func ReadList(r io.Reader) ([]string, error) {
	var refs []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		// A reference never contains '#', so anything after it is a comment.
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if line = strings.TrimSpace(line); line != "" {
			refs = append(refs, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading image list: %w", err)
	}
	return refs, nil
}

// Unique drops references that name the same image as an earlier one, as
// regcap's cache keys do: "busybox", "busybox:latest" and
// "docker.io/library/busybox:latest" are one image. The first spelling is
// kept, so that the fleet sees what admission will ask for. References
// that do not parse are kept once each (compared verbatim): the fleet's own
// 400 names the problem better than we could.
func Unique(refs []string) []string {
	seen := make(map[string]bool, len(refs))
	out := make([]string, 0, len(refs))
	for _, r := range refs {
		key := "raw:" + r
		if ref, err := name.ParseReference(r); err == nil {
			key = ref.Name()
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, r)
	}
	return out
}

// workload is the part of a Kubernetes object that holds images: Pods
// have a pod spec at spec, workloads at spec.template.spec, CronJobs at
// spec.jobTemplate.spec.template.spec.
type workload struct {
	Spec struct {
		podSpec  `yaml:",inline"`
		Template struct {
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		JobTemplate struct {
			Spec struct {
				Template struct {
					Spec podSpec `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		} `yaml:"jobTemplate"`
	} `yaml:"spec"`
}

type podSpec struct {
	Containers          []container `yaml:"containers"`
	InitContainers      []container `yaml:"initContainers"`
	EphemeralContainers []container `yaml:"ephemeralContainers"`
}

type container struct {
	Image string `yaml:"image"`
}

func (p *podSpec) images() []string {
	var out []string
	for _, cs := range [][]container{p.InitContainers, p.Containers, p.EphemeralContainers} {
		for _, c := range cs {
			if c.Image != "" {
				out = append(out, c.Image)
			}
		}
	}
	return out
}

// kinds are the Kubernetes kinds whose pod specs FromK8sYAML reads.
var kinds = []string{"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob"}

// Kinds returns the Kubernetes kinds whose images FromK8sYAML extracts
// (besides the lists of them).
func Kinds() []string { return slices.Clone(kinds) }

// images returns the images of the object in n. Only the kinds that hold
// pod specs are decoded further, so that other objects (CRDs, ConfigMaps)
// whose fields happen to share names never make the stream fail.
func images(n *yaml.Node) ([]string, error) {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return nil, nil
	}
	var head struct {
		Kind  string      `yaml:"kind"`
		Items []yaml.Node `yaml:"items"`
	}
	if err := n.Decode(&head); err != nil {
		return nil, nil // not an object with a kind: nothing to prefetch
	}
	if strings.HasSuffix(head.Kind, "List") {
		var out []string
		for i := range head.Items {
			imgs, err := images(&head.Items[i])
			if err != nil {
				return nil, fmt.Errorf("item %d: %w", i+1, err)
			}
			out = append(out, imgs...)
		}
		return out, nil
	}
	if !slices.Contains(kinds, head.Kind) {
		return nil, nil
	}
	var w workload
	if err := n.Decode(&w); err != nil {
		return nil, fmt.Errorf("%s: %w", head.Kind, err)
	}
	switch head.Kind {
	case "Pod":
		return w.Spec.podSpec.images(), nil
	case "CronJob":
		return w.Spec.JobTemplate.Spec.Template.Spec.images(), nil
	}
	return w.Spec.Template.Spec.images(), nil
}

// FromK8sYAML returns the image of every container, init container and
// ephemeral container of the Pods, Deployments, StatefulSets, DaemonSets,
// ReplicaSets, ReplicationControllers, Jobs and CronJobs (see Kinds) in a
// multi-document YAML (or JSON) stream,
// including those inside lists as "kubectl get -o yaml" prints them, in
// the order they appear. Other kinds are ignored.
func FromK8sYAML(r io.Reader) ([]string, error) {
	dec := yaml.NewDecoder(r)
	var out []string
	for n := 1; ; n++ {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", n, err)
		}
		imgs, err := images(&doc)
		if err != nil {
			return nil, fmt.Errorf("YAML document %d: %w", n, err)
		}
		out = append(out, imgs...)
	}
}
