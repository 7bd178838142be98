// helmrender renders the kvguard Helm chart the way `helm template` does and
// checks what Kubernetes needs from every rendered object.
//
// It uses Go's text/template with the sprig function library (as Helm does),
// plus the Helm built-ins the chart uses: include, tpl, required, toYaml,
// fromYaml, toJson, lookup (always empty), and the objects .Values (values.yaml
// coalesced with -f files, numbers as float64 like Helm's JSON-based values),
// .Release, .Chart, .Capabilities, .Template and .Files (Get and GetBytes over
// the chart's files outside templates/). Templates run with
// missingkey=zero and "<no value>" is blanked, as in Helm.
//
// Build without network (Debian packages golang-go,
// golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v3-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(mktemp -d) go build -o helmrender .
//
// Usage:
//
//	helmrender --chart helm/kvguard [-f override.yaml ...] [--out DIR]
//	           [--expect-kind Kind ...] [--expect-absent Kind ...] [--expect-gpu]
//
// Prints one line; exits 1 on the first class of failure with every problem listed.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	sprig "github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v3"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// ---------------------------------------------------------------- values

// normalize turns YAML-decoded data into what Helm's values hold: maps with
// string keys, []interface{} lists and every number a float64.
func normalize(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, x := range t {
			t[k] = normalize(x)
		}
		return t
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, x := range t {
			m[fmt.Sprint(k)] = normalize(x)
		}
		return m
	case []interface{}:
		for i, x := range t {
			t[i] = normalize(x)
		}
		return t
	case int:
		return float64(t)
	case int64:
		return float64(t)
	case uint64:
		return float64(t)
	default:
		return v
	}
}

func readYAMLMap(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return normalize(m).(map[string]interface{}), nil
}

// coalesce merges src over dst like Helm: maps merge recursively, anything else
// replaces, and a null in src deletes the key.
func coalesce(dst, src map[string]interface{}) {
	for k, sv := range src {
		if sv == nil {
			delete(dst, k)
			continue
		}
		sm, sIsMap := sv.(map[string]interface{})
		dm, dIsMap := dst[k].(map[string]interface{})
		if sIsMap && dIsMap {
			coalesce(dm, sm)
		} else {
			dst[k] = sv
		}
	}
}

// ---------------------------------------------------------------- built-ins

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	enc.Close()
	return strings.TrimSuffix(buf.String(), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return normalize(m).(map[string]interface{})
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func required(msg string, v interface{}) (interface{}, error) {
	if v == nil {
		return v, errors.New(msg)
	}
	if s, ok := v.(string); ok && s == "" {
		return v, errors.New(msg)
	}
	return v, nil
}

type apiVersions []string

func (a apiVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

type kubeVersion struct{ Version, Major, Minor, GitVersion string }

type capabilities struct {
	KubeVersion kubeVersion
	APIVersions apiVersions
}

// ---------------------------------------------------------------- rendering

type chart struct {
	dir       string
	name      string
	meta      map[string]interface{}
	templates map[string]string // template name -> source
	files     chartFiles        // .Files: path relative to the chart -> content
}

// chartFiles is .Files: the chart's files outside templates/ and charts/.
type chartFiles map[string]string

// Get returns a file's content, "" when there is none (as Helm does).
func (f chartFiles) Get(name string) string { return f[name] }

// GetBytes returns a file's content as bytes.
func (f chartFiles) GetBytes(name string) []byte { return []byte(f[name]) }

func loadChart(dir string) (*chart, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, err
	}
	meta := map[string]interface{}{}
	if err := yaml.Unmarshal(raw, &meta); err != nil {
		return nil, fmt.Errorf("Chart.yaml: %v", err)
	}
	for _, k := range []string{"apiVersion", "name", "version"} {
		if s, _ := meta[k].(string); s == "" {
			return nil, fmt.Errorf("Chart.yaml: %s is required", k)
		}
	}
	c := &chart{dir: dir, name: meta["name"].(string), meta: meta, templates: map[string]string{}}
	entries, err := os.ReadDir(filepath.Join(dir, "templates"))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, "templates", e.Name()))
		if err != nil {
			return nil, err
		}
		c.templates[c.name+"/templates/"+e.Name()] = string(data)
	}
	c.files = chartFiles{}
	err = filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if e.IsDir() {
			if rel == "templates" || rel == "charts" {
				return filepath.SkipDir
			}
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		c.files[filepath.ToSlash(rel)] = string(data)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// chartObject is .Chart: Helm exposes Chart.yaml's fields capitalized.
func (c *chart) chartObject() map[string]interface{} {
	o := map[string]interface{}{}
	for k, v := range c.meta {
		o[strings.ToUpper(k[:1])+k[1:]] = v
	}
	return o
}

// render returns rendered output per template name (partials excluded).
func (c *chart) render(values map[string]interface{}, release, namespace string) (map[string]string, error) {
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	root := template.New("gotpl").Option("missingkey=zero")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["required"] = required
	funcs["lookup"] = func(...interface{}) map[string]interface{} { return map[string]interface{}{} }
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	root.Funcs(funcs)
	names := make([]string, 0, len(c.templates))
	for n := range c.templates {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := root.New(n).Parse(c.templates[n]); err != nil {
			return nil, fmt.Errorf("parse %s: %v", n, err)
		}
	}
	caps := capabilities{
		KubeVersion: kubeVersion{Version: "v1.29.0", Major: "1", Minor: "29", GitVersion: "v1.29.0"},
		APIVersions: apiVersions{"v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1", "monitoring.coreos.com/v1"},
	}
	out := map[string]string{}
	for _, n := range names {
		if strings.HasPrefix(filepath.Base(n), "_") {
			continue
		}
		top := map[string]interface{}{
			"Values":       values,
			"Chart":        c.chartObject(),
			"Release":      map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
			"Capabilities": caps,
			"Template":     map[string]interface{}{"Name": n, "BasePath": c.name + "/templates"},
			"Files":        c.files,
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, n, top); err != nil {
			return nil, fmt.Errorf("render %s: %v", n, err)
		}
		out[n] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return out, nil
}

// ---------------------------------------------------------------- checks

var docSep = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)
var dns1123 = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

type doc struct {
	file string
	obj  map[string]interface{}
}

func (d doc) kind() string { s, _ := d.obj["kind"].(string); return s }
func (d doc) name() string { s, _ := get(d.obj, "metadata", "name").(string); return s }

func get(v interface{}, path ...interface{}) interface{} {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]interface{})
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]interface{})
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func asList(v interface{}) []interface{} { l, _ := v.([]interface{}); return l }
func asMap(v interface{}) map[string]interface{} {
	m, _ := v.(map[string]interface{})
	return m
}

type checker struct{ problems []string }

func (c *checker) failf(format string, a ...interface{}) {
	c.problems = append(c.problems, fmt.Sprintf(format, a...))
}

func splitDocs(file, text string, ck *checker) []doc {
	var docs []doc
	for _, part := range docSep.Split(text, -1) {
		content := strings.TrimSpace(part)
		empty := true
		for _, line := range strings.Split(content, "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if empty {
			continue
		}
		var obj map[string]interface{}
		if err := yaml.Unmarshal([]byte(part), &obj); err != nil {
			ck.failf("%s: not valid YAML: %v\n%s", file, err, part)
			continue
		}
		docs = append(docs, doc{file: file, obj: obj})
	}
	return docs
}

func checkCommon(d doc, ck *checker) {
	if s, _ := d.obj["apiVersion"].(string); s == "" {
		ck.failf("%s: apiVersion missing", d.file)
	}
	if d.kind() == "" {
		ck.failf("%s: kind missing", d.file)
	}
	name := d.name()
	if name == "" {
		ck.failf("%s: metadata.name missing", d.file)
	} else if len(name) > 253 || !dns1123.MatchString(name) {
		ck.failf("%s: metadata.name %q is not a DNS-1123 name", d.file, name)
	}
	for k, v := range asMap(get(d.obj, "metadata", "labels")) {
		s, ok := v.(string)
		if !ok {
			ck.failf("%s: label %s is not a string (%v)", d.file, k, v)
		} else if len(s) > 63 {
			ck.failf("%s: label %s longer than 63 characters", d.file, k)
		}
	}
}

func isTrue(v interface{}) bool  { b, ok := v.(bool); return ok && b }
func isFalse(v interface{}) bool { b, ok := v.(bool); return ok && !b }

func checkContainer(file string, c map[string]interface{}, volumes map[string]map[string]interface{}, ck *checker, wantProbes bool) {
	name, _ := c["name"].(string)
	if name == "" {
		ck.failf("%s: a container has no name", file)
	}
	if img, _ := c["image"].(string); img == "" || strings.HasSuffix(img, ":") {
		ck.failf("%s: container %s has no image (%v)", file, name, c["image"])
	}
	for _, a := range asList(c["args"]) {
		if _, ok := a.(string); !ok {
			ck.failf("%s: container %s has a non-string arg %v", file, name, a)
		}
	}
	ports := map[float64]bool{}
	portNames := map[string]bool{}
	for _, p := range asList(c["ports"]) {
		if n, ok := get(p, "containerPort").(int); ok {
			ports[float64(n)] = true
		} else {
			ck.failf("%s: container %s has a port without an integer containerPort", file, name)
		}
		if pn, _ := get(p, "name").(string); pn != "" {
			if len(pn) > 15 {
				ck.failf("%s: port name %q longer than 15 characters", file, pn)
			}
			portNames[pn] = true
		}
	}
	if wantProbes {
		// Every probe: gRPC on a containerPort number, or tcpSocket / httpGet on a containerPort
		// number or name of this container (exec needs a checker in the image; none is used).
		for _, probe := range []string{"startupProbe", "readinessProbe", "livenessProbe"} {
			p := asMap(c[probe])
			var port interface{}
			kind := ""
			for _, k := range []string{"grpc", "tcpSocket", "httpGet"} {
				if p[k] != nil {
					kind = k
					port = get(p, k, "port")
				}
			}
			switch pv := port.(type) {
			case int:
				if !ports[float64(pv)] {
					ck.failf("%s: container %s %s (%s) port %d is not a containerPort", file, name, probe, kind, pv)
				}
			case string:
				if kind == "grpc" || !portNames[pv] {
					ck.failf("%s: container %s %s (%s) port %q names no containerPort of it", file, name, probe, kind, pv)
				}
			default:
				ck.failf("%s: container %s has no grpc/tcpSocket/httpGet %s with a port", file, name, probe)
			}
		}
	}
	sc := asMap(c["securityContext"])
	if !isFalse(sc["allowPrivilegeEscalation"]) {
		ck.failf("%s: container %s: securityContext.allowPrivilegeEscalation must be false", file, name)
	}
	if !isTrue(sc["readOnlyRootFilesystem"]) {
		ck.failf("%s: container %s: securityContext.readOnlyRootFilesystem must be true", file, name)
	}
	dropsAll := false
	for _, d := range asList(get(sc, "capabilities", "drop")) {
		if d == "ALL" {
			dropsAll = true
		}
	}
	if !dropsAll {
		ck.failf("%s: container %s: securityContext.capabilities.drop must hold ALL", file, name)
	}
	tmp := false
	for _, m := range asList(c["volumeMounts"]) {
		vn, _ := get(m, "name").(string)
		vol, ok := volumes[vn]
		if !ok {
			ck.failf("%s: container %s mounts unknown volume %q", file, name, vn)
			continue
		}
		if get(m, "mountPath") == "/tmp" && vol["emptyDir"] != nil {
			tmp = true
		}
	}
	if !tmp {
		ck.failf("%s: container %s has no emptyDir at /tmp", file, name)
	}
}

type expectations struct {
	kinds, absent []string
	gpu, guard    bool
	gpuResource   string
}

func checkAll(docs []doc, exp expectations, ck *checker) {
	byKind := map[string][]doc{}
	for _, d := range docs {
		checkCommon(d, ck)
		byKind[d.kind()] = append(byKind[d.kind()], d)
	}
	for _, k := range exp.kinds {
		if len(byKind[k]) == 0 {
			ck.failf("expected a %s, none rendered", k)
		}
	}
	for _, k := range exp.absent {
		if len(byKind[k]) != 0 {
			ck.failf("expected no %s, got %d", k, len(byKind[k]))
		}
	}
	if len(byKind["Deployment"]) != 1 {
		ck.failf("expected exactly one Deployment, got %d", len(byKind["Deployment"]))
		return
	}
	dep := byKind["Deployment"][0]
	depName := dep.name()
	selector := asMap(get(dep.obj, "spec", "selector", "matchLabels"))
	if len(selector) == 0 {
		ck.failf("%s: Deployment spec.selector.matchLabels missing", dep.file)
	}
	podLabels := asMap(get(dep.obj, "spec", "template", "metadata", "labels"))
	for k, v := range selector {
		if podLabels[k] != v {
			ck.failf("%s: pod template labels do not match the selector (%s)", dep.file, k)
		}
	}
	pod := asMap(get(dep.obj, "spec", "template", "spec"))
	if !isTrue(get(pod, "securityContext", "runAsNonRoot")) {
		ck.failf("%s: pod securityContext.runAsNonRoot must be true", dep.file)
	}
	if uid, ok := get(pod, "securityContext", "runAsUser").(int); ok && uid == 0 {
		ck.failf("%s: pod securityContext.runAsUser is 0", dep.file)
	}
	volumes := map[string]map[string]interface{}{}
	for _, v := range asList(pod["volumes"]) {
		n, _ := get(v, "name").(string)
		if _, dup := volumes[n]; dup {
			ck.failf("%s: duplicate volume %q", dep.file, n)
		}
		volumes[n] = asMap(v)
	}
	containers := asList(pod["containers"])
	if len(containers) == 0 {
		ck.failf("%s: no containers", dep.file)
	}
	// Native sidecars (init containers with restartPolicy Always, Kubernetes >= 1.29) run for the
	// pod's life like containers; the chart renders no other init containers.
	for _, c := range asList(pod["initContainers"]) {
		if get(c, "restartPolicy") != "Always" {
			ck.failf("%s: init container %v is not a native sidecar (restartPolicy Always)", dep.file, get(c, "name"))
		}
		containers = append(containers, c)
	}
	byName := map[string]map[string]interface{}{}
	containerPortNames := map[string]bool{}
	containerPortNumbers := map[int]bool{}
	for _, c := range containers {
		cm := asMap(c)
		n, _ := cm["name"].(string)
		if _, dup := byName[n]; dup {
			ck.failf("%s: duplicate container %q", dep.file, n)
		}
		byName[n] = cm
		checkContainer(dep.file, cm, volumes, ck, true)
		for _, p := range asList(cm["ports"]) {
			if pn, _ := get(p, "name").(string); pn != "" {
				containerPortNames[pn] = true
			}
			if pn, ok := get(p, "containerPort").(int); ok {
				containerPortNumbers[pn] = true
			}
		}
	}
	server := byName["server"]
	if server == nil {
		ck.failf("%s: no container named server", dep.file)
	}
	if exp.guard && byName["guard"] == nil {
		ck.failf("%s: the guard sidecar container is missing", dep.file)
	}
	if !exp.guard && byName["guard"] != nil {
		ck.failf("%s: guard container present although guard.enabled is false", dep.file)
	}
	if server != nil {
		gpu := get(server, "resources", "limits", exp.gpuResource)
		if exp.gpu && gpu == nil {
			ck.failf("%s: server has no %s limit", dep.file, exp.gpuResource)
		}
		if !exp.gpu && gpu != nil {
			ck.failf("%s: server requests %s although GPUs are off", dep.file, exp.gpuResource)
		}
		if exp.gpu && !containsArg(server, "--device=cuda") {
			ck.failf("%s: GPU server does not run with --device=cuda", dep.file)
		}
	}
	for _, s := range byKind["Service"] {
		sel := asMap(get(s.obj, "spec", "selector"))
		if len(sel) == 0 {
			ck.failf("%s: Service has no selector", s.file)
		}
		for k, v := range sel {
			if podLabels[k] != v {
				ck.failf("%s: Service selector %s=%v does not select the pods", s.file, k, v)
			}
		}
		ports := asList(get(s.obj, "spec", "ports"))
		if len(ports) == 0 {
			ck.failf("%s: Service has no ports", s.file)
		}
		for _, p := range ports {
			if _, ok := get(p, "port").(int); !ok {
				ck.failf("%s: Service port without an integer port", s.file)
			}
			if tp, ok := get(p, "targetPort").(string); ok && !containerPortNames[tp] {
				ck.failf("%s: Service targetPort %q names no container port", s.file, tp)
			}
			if tp, ok := get(p, "targetPort").(int); ok && !containerPortNumbers[tp] {
				ck.failf("%s: Service targetPort %d is no containerPort", s.file, tp)
			}
		}
	}
	servicePortNames := map[string]bool{}
	for _, s := range byKind["Service"] {
		for _, p := range asList(get(s.obj, "spec", "ports")) {
			if n, _ := get(p, "name").(string); n != "" {
				servicePortNames[n] = true
			}
		}
	}
	for _, sm := range byKind["ServiceMonitor"] {
		eps := asList(get(sm.obj, "spec", "endpoints"))
		if len(eps) == 0 {
			ck.failf("%s: ServiceMonitor has no endpoints", sm.file)
		}
		for _, e := range eps {
			if p, _ := get(e, "port").(string); !servicePortNames[p] {
				ck.failf("%s: ServiceMonitor endpoint port %q is not a Service port", sm.file, p)
			}
		}
		for k, v := range asMap(get(sm.obj, "spec", "selector", "matchLabels")) {
			found := false
			for _, s := range byKind["Service"] {
				if asMap(get(s.obj, "metadata", "labels"))[k] == v {
					found = true
				}
			}
			if !found {
				ck.failf("%s: ServiceMonitor selector %s=%v matches no Service", sm.file, k, v)
			}
		}
	}
	for _, h := range byKind["HorizontalPodAutoscaler"] {
		if get(h.obj, "spec", "scaleTargetRef", "name") != depName || get(h.obj, "spec", "scaleTargetRef", "kind") != "Deployment" {
			ck.failf("%s: HPA does not target the Deployment", h.file)
		}
		lo, ok1 := get(h.obj, "spec", "minReplicas").(int)
		hi, ok2 := get(h.obj, "spec", "maxReplicas").(int)
		if !ok1 || !ok2 || lo < 1 || hi < lo {
			ck.failf("%s: HPA min/max replicas invalid", h.file)
		}
		metrics := asList(get(h.obj, "spec", "metrics"))
		if len(metrics) == 0 {
			ck.failf("%s: HPA has no metrics", h.file)
		}
		for _, m := range metrics {
			if get(m, "type") == "Pods" && get(m, "pods", "metric", "name") == nil {
				ck.failf("%s: HPA Pods metric without a name", h.file)
			}
		}
		if _, ok := get(dep.obj, "spec", "replicas").(int); ok {
			ck.failf("%s: Deployment sets replicas although an HPA manages it", dep.file)
		}
	}
	for _, p := range byKind["PodDisruptionBudget"] {
		_, hasMin := asMap(get(p.obj, "spec"))["minAvailable"]
		_, hasMax := asMap(get(p.obj, "spec"))["maxUnavailable"]
		if hasMin == hasMax {
			ck.failf("%s: PDB needs exactly one of minAvailable / maxUnavailable", p.file)
		}
		for k, v := range asMap(get(p.obj, "spec", "selector", "matchLabels")) {
			if podLabels[k] != v {
				ck.failf("%s: PDB selector does not select the pods", p.file)
			}
		}
	}
	for _, cm := range byKind["ConfigMap"] {
		for k, v := range asMap(cm.obj["data"]) {
			s, ok := v.(string)
			if !ok {
				ck.failf("%s: ConfigMap data %s is not a string", cm.file, k)
				continue
			}
			if strings.HasSuffix(k, ".json") && !json.Valid([]byte(s)) {
				ck.failf("%s: ConfigMap data %s is not valid JSON", cm.file, k)
			}
		}
	}
	// Every ConfigMap/Secret/PVC volume either comes from this chart or from values.
	for n, v := range volumes {
		if name, ok := get(v, "configMap", "name").(string); ok && name == depName+"-controller" && len(byKind["ConfigMap"]) == 0 {
			ck.failf("%s: volume %s uses ConfigMap %s that is not rendered", dep.file, n, name)
		}
	}
}

func containsArg(c map[string]interface{}, arg string) bool {
	for _, a := range asList(c["args"]) {
		if a == arg {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------- main

func main() {
	chartDir := flag.String("chart", "", "chart directory")
	outDir := flag.String("out", "", "write the rendered manifests here (one file per template, plus all.yaml)")
	release := flag.String("release", "kvguard", "release name")
	namespace := flag.String("namespace", "kvguard", "release namespace")
	gpu := flag.Bool("expect-gpu", false, "the server container must request GPUs")
	var files, kinds, absent multiFlag
	flag.Var(&files, "f", "values override file (repeatable)")
	flag.Var(&kinds, "expect-kind", "a kind that must be rendered (repeatable)")
	flag.Var(&absent, "expect-absent", "a kind that must not be rendered (repeatable)")
	flag.Parse()
	fail := func(format string, a ...interface{}) {
		fmt.Printf("helmrender: FAIL "+format+"\n", a...)
		os.Exit(1)
	}
	if *chartDir == "" {
		fail("--chart is required")
	}
	c, err := loadChart(*chartDir)
	if err != nil {
		fail("%v", err)
	}
	values, err := readYAMLMap(filepath.Join(*chartDir, "values.yaml"))
	if err != nil {
		fail("%v", err)
	}
	for _, f := range files {
		o, err := readYAMLMap(f)
		if err != nil {
			fail("%v", err)
		}
		coalesce(values, o)
	}
	rendered, err := c.render(values, *release, *namespace)
	if err != nil {
		fail("%v", err)
	}
	ck := &checker{}
	var docs []doc
	var names []string
	for n := range rendered {
		names = append(names, n)
	}
	sort.Strings(names)
	var all strings.Builder
	for _, n := range names {
		if strings.HasSuffix(n, "NOTES.txt") {
			if strings.TrimSpace(rendered[n]) == "" {
				ck.failf("%s renders empty", n)
			}
			continue
		}
		docs = append(docs, splitDocs(n, rendered[n], ck)...)
		if strings.TrimSpace(rendered[n]) != "" {
			fmt.Fprintf(&all, "---\n# Source: %s\n%s\n", n, strings.TrimSpace(rendered[n]))
		}
	}
	exp := expectations{kinds: kinds, absent: absent, gpu: *gpu, guard: isTrue(get(values, "guard", "enabled"))}
	exp.gpuResource, _ = get(values, "server", "gpu", "resourceName").(string)
	if exp.gpuResource == "" {
		exp.gpuResource = "nvidia.com/gpu"
	}
	checkAll(docs, exp, ck)
	if *outDir != "" {
		if err := os.MkdirAll(*outDir, 0o755); err != nil {
			fail("%v", err)
		}
		if err := os.WriteFile(filepath.Join(*outDir, "all.yaml"), []byte(all.String()), 0o644); err != nil {
			fail("%v", err)
		}
		if notes, ok := rendered[c.name+"/templates/NOTES.txt"]; ok {
			_ = os.WriteFile(filepath.Join(*outDir, "NOTES.txt"), []byte(notes), 0o644)
		}
	}
	if len(ck.problems) > 0 {
		for _, p := range ck.problems {
			fmt.Println("  " + p)
		}
		fail("%d problem(s) in %d documents (values: %s)", len(ck.problems), len(docs), strings.Join(append([]string{"values.yaml"}, files...), " + "))
	}
	counts := map[string]int{}
	for _, d := range docs {
		counts[d.kind()]++
	}
	var parts []string
	for k, n := range counts {
		parts = append(parts, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(parts)
	fmt.Printf("helmrender: OK %d documents (%s) from values.yaml%s\n", len(docs), strings.Join(parts, " "),
		func() string {
			if len(files) == 0 {
				return ""
			}
			return " + " + strings.Join(files, " + ")
		}())
}
