package prefetch_test

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/regcap/regcap/internal/prefetch"
)

func TestReadList(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string
	}{
		{"plain", "busybox\nnginx:1.27\n", []string{"busybox", "nginx:1.27"}},
		{"comments and blanks", "# images for the rollout\n\n  busybox  \n\t\nnginx # the web tier\n#ghcr.io/x/y\n", []string{"busybox", "nginx"}},
		{"crlf and no final newline", "a:1\r\nb@sha256:" + strings.Repeat("0", 64), []string{"a:1", "b@sha256:" + strings.Repeat("0", 64)}},
		{"empty", "", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := prefetch.ReadList(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestUnique(t *testing.T) {
	cases := []struct {
		name string
		in   []string
		want []string
	}{
		{"docker hub spellings are one image",
			[]string{"busybox", "busybox:latest", "docker.io/library/busybox:latest", "index.docker.io/library/busybox", "busybox:1.36"},
			[]string{"busybox", "busybox:1.36"}},
		{"registries differ", []string{"ghcr.io/a/b:1", "quay.io/a/b:1", "ghcr.io/a/b:1"}, []string{"ghcr.io/a/b:1", "quay.io/a/b:1"}},
		{"bad references kept once, verbatim", []string{"Not A Ref", "Not A Ref", "not a ref"}, []string{"Not A Ref", "not a ref"}},
		{"order kept", []string{"c", "a", "b", "a"}, []string{"c", "a", "b"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := prefetch.Unique(tc.in); !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFromK8sYAML(t *testing.T) {
	f, err := os.Open("testdata/workloads.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := prefetch.FromK8sYAML(f)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		// Deployment: init containers first, then containers.
		"registry.example.com/shop/migrate:1.4.2", "nginx:1.27", "quay.io/prometheus/nginx-exporter:v1.3.0",
		"postgres@sha256:0f1b1e2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8", // StatefulSet
		"ghcr.io/example/node-agent:2.0.0",                                                 // DaemonSet
		"busybox",                                                                          // Job
		"busybox:1.36", "registry.example.com/shop/backup:latest",                          // CronJob
		"registry.example.com/shop/app:3.1", "docker.io/library/busybox:latest", // Pod with an ephemeral container
		"registry.example.com/shop/api:5.0.1", "registry.example.com/shop/api:5.0.1", // List items
	}
	if !slices.Equal(got, want) {
		t.Fatalf("images:\n got %q\nwant %q", got, want)
	}
	// The ConfigMap's "image" key is not a container image.
	if slices.Contains(got, "not-an-image-reference-to-extract:1") {
		t.Fatal("extracted an image from a ConfigMap")
	}
	uniq := prefetch.Unique(got)
	if len(uniq) != 10 {
		t.Fatalf("after dedup want 10 images, got %d: %q", len(uniq), uniq)
	}
}

func TestFromK8sYAMLErrors(t *testing.T) {
	cases := []struct {
		name, in string
		wantErr  bool
		want     int
	}{
		{"json document", `{"kind":"Pod","spec":{"containers":[{"image":"a:1"}]}}`, false, 1},
		{"only separators", "---\n---\n", false, 0},
		{"broken yaml", "kind: Pod\nspec: [\n", true, 0},
		{"a pod whose containers are not a list", "kind: Pod\nspec:\n  containers: nginx\n", true, 0},
		{"other kinds may shape spec as they like", "kind: Rollout\nspec:\n  template: a string\n---\nkind: Pod\nspec:\n  containers: [{image: a:1}]\n", false, 1},
		{"scalar and sequence documents are skipped", "just text\n---\n- a\n- b\n", false, 0},
		{"typed list", "kind: PodList\nitems:\n- kind: Pod\n  spec:\n    containers: [{image: a:1}, {image: b:2}]\n", false, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := prefetch.FromK8sYAML(strings.NewReader(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if len(got) != tc.want {
				t.Fatalf("got %q, want %d images", got, tc.want)
			}
		})
	}
}

// TestKinds: every kind that Kinds names (and the CLI's help lists) has
// its images extracted, ReplicaSets and ReplicationControllers included.
func TestKinds(t *testing.T) {
	kinds := prefetch.Kinds()
	for _, k := range []string{"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob"} {
		if !slices.Contains(kinds, k) {
			t.Errorf("Kinds() %q lacks %s", kinds, k)
		}
	}
	for _, k := range kinds {
		spec := "spec:\n  template:\n    spec:\n      containers: [{image: a:1}]\n"
		switch k {
		case "Pod":
			spec = "spec:\n  containers: [{image: a:1}]\n"
		case "CronJob":
			spec = "spec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers: [{image: a:1}]\n"
		}
		got, err := prefetch.FromK8sYAML(strings.NewReader("kind: " + k + "\n" + spec))
		if err != nil || !slices.Equal(got, []string{"a:1"}) {
			t.Errorf("%s: got %q, %v; want [a:1]", k, got, err)
		}
	}
}
