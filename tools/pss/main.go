// Command pss evaluates every pod template in rendered Kubernetes manifests against a Pod
// Security Standard with the upstream evaluator (k8s.io/pod-security-admission), the code a
// kube-apiserver runs for the PodSecurity admission plugin.
//
// Usage: pss [-level restricted] [-version latest] FILE|- ...
//
// It prints one line per pod template, "allowed" or the evaluator's own forbidden reasons, and
// exits 1 when any template is forbidden, 2 when the input holds no pod template at all (a check
// that saw nothing must not pass) or cannot be read.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// object is the part of any workload this tool reads: where its pod template sits.
type object struct {
	Kind     string            `json:"kind"`
	Metadata metav1.ObjectMeta `json:"metadata"`
	Spec     struct {
		corev1.PodSpec
		Template    *corev1.PodTemplateSpec `json:"template"`
		JobTemplate *struct {
			Spec struct {
				Template corev1.PodTemplateSpec `json:"template"`
			} `json:"spec"`
		} `json:"jobTemplate"`
	} `json:"spec"`
}

// podTemplate is the pod an object creates, or nil for objects that create none.
func (o *object) podTemplate() *corev1.PodTemplateSpec {
	switch {
	case o.Kind == "Pod":
		return &corev1.PodTemplateSpec{ObjectMeta: o.Metadata, Spec: o.Spec.PodSpec}
	case o.Spec.JobTemplate != nil:
		return &o.Spec.JobTemplate.Spec.Template
	default:
		return o.Spec.Template
	}
}

func main() {
	level := flag.String("level", string(api.LevelRestricted), "privileged, baseline or restricted")
	version := flag.String("version", "latest", "policy version: latest or v1.N")
	flag.Parse()
	code, err := run(*level, *version, flag.Args(), os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pss:", err)
	}
	os.Exit(code)
}

func run(level, version string, paths []string, out io.Writer) (int, error) {
	lv, err := levelVersion(level, version)
	if err != nil {
		return 2, err
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		return 2, err
	}
	forbidden, seen := 0, 0
	for _, path := range paths {
		objects, err := read(path)
		if err != nil {
			return 2, fmt.Errorf("%s: %w", path, err)
		}
		for _, obj := range objects {
			template := obj.podTemplate()
			if template == nil {
				continue
			}
			seen++
			result := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &template.ObjectMeta, &template.Spec))
			name := fmt.Sprintf("%s/%s", obj.Kind, obj.Metadata.Name)
			if result.Allowed {
				fmt.Fprintf(out, "%s: allowed by %s:%s\n", name, lv.Level, lv.Version)
				continue
			}
			forbidden++
			fmt.Fprintf(out, "%s: forbidden by %s:%s: %s\n", name, lv.Level, lv.Version, result.ForbiddenDetail())
		}
	}
	switch {
	case seen == 0:
		return 2, errors.New("no pod template found: nothing was checked")
	case forbidden > 0:
		return 1, fmt.Errorf("%d of %d pod templates forbidden", forbidden, seen)
	}
	return 0, nil
}

func levelVersion(level, version string) (api.LevelVersion, error) {
	parsedLevel, err := api.ParseLevel(level)
	if err != nil {
		return api.LevelVersion{}, err
	}
	parsedVersion, err := api.ParseVersion(version)
	if err != nil {
		return api.LevelVersion{}, err
	}
	return api.LevelVersion{Level: parsedLevel, Version: parsedVersion}, nil
}

// read decodes every YAML document of a file ("-" is standard input).
func read(path string) ([]object, error) {
	var in io.Reader = os.Stdin
	if path != "-" {
		file, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer file.Close()
		in = file
	}
	decoder := utilyaml.NewYAMLOrJSONDecoder(in, 4096)
	var objects []object
	for {
		var obj object
		err := decoder.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return objects, nil
		}
		if err != nil {
			return nil, err
		}
		if obj.Kind != "" {
			objects = append(objects, obj)
		}
	}
}
