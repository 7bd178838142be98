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
