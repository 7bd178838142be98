{{/* Chart name, truncated to 63 characters. */}}
{{- define "kvguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless the release name already holds the chart name. */}}
{{- define "kvguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kvguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kvguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kvguard.labels" -}}
helm.sh/chart: {{ include "kvguard.chart" . }}
{{ include "kvguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kvguard
{{- end -}}

{{- define "kvguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kvguard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kvguard.image" -}}
{{- printf "%s:%s" (required "image.repository is required" .Values.image.repository) (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The --device flag: server.device, or cuda when GPUs are requested and device is left at cpu. */}}
{{- define "kvguard.device" -}}
{{- if and .Values.server.gpu.enabled (eq .Values.server.device "cpu") -}}
cuda
{{- else -}}
{{- .Values.server.device -}}
{{- end -}}
{{- end -}}

{{/* Path of the guard's hazard model, empty for the fallback rule. */}}
{{- define "kvguard.guardModelPath" -}}
{{- $m := .Values.guard.model -}}
{{- if eq $m.source "image" -}}
{{- required "guard.model.path is required when guard.model.source is image" $m.path -}}
{{- else if or (eq $m.source "configMap") (eq $m.source "secret") (eq $m.source "pvc") -}}
{{- printf "%s/%s" (trimSuffix "/" $m.mountPath) (required "guard.model.file is required" $m.file) -}}
{{- else if eq $m.source "none" -}}
none
{{- else -}}
{{- fail (printf "guard.model.source must be none, image, configMap, secret or pvc (got %q)" $m.source) -}}
{{- end -}}
{{- end -}}

{{/* Whole seconds of a millisecond value, rounded up. */}}
{{- define "kvguard.ceilSeconds" -}}
{{- div (add (int64 .) 999) 1000 -}}
{{- end -}}

{{/* The guard's --drain_wait_ms: guard.drainWaitMs, or server.drainGraceMs + 5000 when 0. */}}
{{- define "kvguard.guardDrainWaitMs" -}}
{{- if gt (int64 .Values.guard.drainWaitMs) 0 -}}
{{- int64 .Values.guard.drainWaitMs -}}
{{- else -}}
{{- add (int64 .Values.server.drainGraceMs) 5000 -}}
{{- end -}}
{{- end -}}

{{/* preStop sleep of the guard when it runs as a plain container (guard.nativeSidecar=false): the
server's preStop sleep + its drain grace + 5 s, so the guard outlives the server's drain. */}}
{{- define "kvguard.guardPreStopSeconds" -}}
{{- add (int64 .Values.server.preStopSleepSeconds) (include "kvguard.ceilSeconds" .Values.server.drainGraceMs) 5 -}}
{{- end -}}

{{/* Seconds the pod needs between deletion and the last container's exit, in the worst case:
no guard: server preStop + drain grace; native sidecar: the guard gets SIGTERM once the server has
exited, then drains for up to --drain_wait_ms; plain guard container: its preStop sleep, then its
drain. terminationGracePeriodSeconds must be at least that. */}}
{{- define "kvguard.terminationBudgetSeconds" -}}
{{- $server := add (int64 .Values.server.preStopSleepSeconds) (include "kvguard.ceilSeconds" .Values.server.drainGraceMs) -}}
{{- if not .Values.guard.enabled -}}
{{- $server -}}
{{- else -}}
{{- $guardDrain := include "kvguard.ceilSeconds" (include "kvguard.guardDrainWaitMs" .) -}}
{{- if .Values.guard.nativeSidecar -}}
{{- add $server $guardDrain -}}
{{- else -}}
{{- add (include "kvguard.guardPreStopSeconds" .) $guardDrain -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Kubernetes' gRPC probe cannot do TLS, so server.probes.type auto picks tcpSocket when the
server's gRPC port serves TLS. Token auth guards GenerationService only, not grpc.health.v1: the gRPC
probe still works with server.auth. */}}
{{- define "kvguard.serverProbeType" -}}
{{- $t := default "auto" .Values.server.probes.type -}}
{{- if eq $t "auto" -}}
{{- if .Values.server.tls.secretName }}tcpSocket{{ else }}grpc{{ end -}}
{{- else if eq $t "grpc" -}}
{{- if .Values.server.tls.secretName -}}
{{- fail "server.probes.type=grpc cannot probe a TLS port (server.tls.secretName): use auto or tcpSocket" -}}
{{- end -}}
grpc
{{- else if eq $t "tcpSocket" -}}
tcpSocket
{{- else -}}
{{- fail (printf "server.probes.type must be auto, grpc or tcpSocket (got %q)" $t) -}}
{{- end -}}
{{- end -}}

{{/* Mount points of the Secrets (outside /etc/kvguard, the guard's ConfigMap mount). */}}
{{- define "kvguard.serverTlsDir" -}}/etc/kvguard-tls/server{{- end -}}
{{- define "kvguard.guardTlsDir" -}}/etc/kvguard-tls/guard{{- end -}}
{{- define "kvguard.authDir" -}}/etc/kvguard-auth{{- end -}}

{{/* The guard container: a native sidecar (an init container with restartPolicy Always) when
guard.nativeSidecar, else a plain container whose preStop sleep outlives the server's drain. It
listens for gRPC on 127.0.0.1 only (the server is its only client, inside the pod), so Kubernetes
probes its /metrics port, which it opens once the hazard model is loaded. */}}
{{- define "kvguard.guardContainer" -}}
{{- $tlsDir := include "kvguard.guardTlsDir" . -}}
- name: guard
  image: {{ include "kvguard.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.guard.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  command: ["kvguard-guard"]
  args:
    - --listen=127.0.0.1:{{ .Values.guard.port }}
    - --metrics_listen=0.0.0.0:{{ .Values.guard.metricsPort }}
    - --config=/etc/kvguard/controller.json
    - --threads={{ .Values.guard.threads }}
    - --model={{ include "kvguard.guardModelPath" . }}
    - --drain_wait_ms={{ include "kvguard.guardDrainWaitMs" . }}
    {{- if .Values.guard.tls.secretName }}
    - --tls_cert_file={{ $tlsDir }}/tls.crt
    - --tls_key_file={{ $tlsDir }}/tls.key
    - --tls_client_ca_file={{ $tlsDir }}/ca.crt
    {{- end }}
    {{- with .Values.guard.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.guard.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: guard-metrics
      containerPort: {{ .Values.guard.metricsPort }}
      protocol: TCP
  {{- range $kind := list "startup" "readiness" "liveness" }}
  {{ $kind }}Probe:
    httpGet:
      path: /metrics
      port: guard-metrics
    {{- toYaml (get $.Values.guard.probes $kind) | nindent 4 }}
  {{- end }}
  {{- if not .Values.guard.nativeSidecar }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "{{ include "kvguard.guardPreStopSeconds" . }}"]
  {{- end }}
  resources:
    {{- toYaml .Values.guard.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: controller-config
      mountPath: /etc/kvguard
      readOnly: true
    {{- if has .Values.guard.model.source (list "configMap" "secret" "pvc") }}
    - name: guard-model
      mountPath: {{ .Values.guard.model.mountPath }}
      readOnly: true
    {{- end }}
    {{- if .Values.guard.tls.secretName }}
    - name: guard-tls
      mountPath: {{ $tlsDir }}
      readOnly: true
    {{- end }}
{{- end -}}
