{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "dcostack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; the release name alone when it already contains the chart name. */}}
{{- define "dcostack.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dcostack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one service's objects. Call with (dict "root" $ "name" $name). */}}
{{- define "dcostack.componentName" -}}
{{- printf "%s-%s" (include "dcostack.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "dcostack.labels" -}}
helm.sh/chart: {{ include "dcostack.chart" . }}
app.kubernetes.io/name: {{ include "dcostack.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: dcostack
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one service. Call with (dict "root" $ "name" $name). */}}
{{- define "dcostack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dcostack.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/* Labels of one service's objects. Call with (dict "root" $ "name" $name). */}}
{{- define "dcostack.componentLabels" -}}
{{ include "dcostack.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "dcostack.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Name of the ConfigMap every service reads. */}}
{{- define "dcostack.configName" -}}
{{- printf "%s-config" (include "dcostack.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Environment from Secrets: database DSN and secret key (both created outside the chart). */}}
{{- define "dcostack.secretEnv" -}}
- name: DCOSTACK_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required (a Secret holding the PostgreSQL DSN)" .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- if ne .Values.environment "dev" }}
- name: DCOSTACK_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ required "secretKey.existingSecret is required outside dev (a Secret holding DCOSTACK_SECRET_KEY)" .Values.secretKey.existingSecret }}
      key: {{ .Values.secretKey.secretKey }}
{{- end }}
{{- end }}
