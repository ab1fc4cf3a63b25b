{{/* Chart name, truncated to 63 characters (the DNS label limit). */}}
{{- define "synpo-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<chart> unless the release name already holds the chart name. */}}
{{- define "synpo-operator.fullname" -}}
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

{{- define "synpo-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "synpo-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "synpo-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "synpo-operator.labels" -}}
helm.sh/chart: {{ include "synpo-operator.chart" . }}
{{ include "synpo-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: synpo
app.kubernetes.io/component: operator
{{- end }}

{{- define "synpo-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "synpo-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "synpo-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespaces the operator watches, as a JSON list (empty: all): watchNamespaces, or in namespaced scope
by default the release namespace. */}}
{{- define "synpo-operator.watchNamespaces" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (not .Values.watchNamespaces) }}
{{- list .Release.Namespace | toJson }}
{{- else }}
{{- .Values.watchNamespaces | default list | toJson }}
{{- end }}
{{- end }}

{{/* The labels of this release's operator pods, as a JSON object (for selectors built in templates). */}}
{{- define "synpo-operator.podSelector" -}}
{{- include "synpo-operator.selectorLabels" . | fromYaml | toJson }}
{{- end }}

{{/* Fails the render on value combinations the schema cannot express clearly. */}}
{{- define "synpo-operator.validate" -}}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) }}
{{- fail "watchNamespaces holds a namespace twice" }}
{{- end }}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled (two operators without it would both reconcile)" }}
{{- end }}
{{- if ge (float64 .Values.operator.leaderElection.renewSeconds) (float64 .Values.operator.leaderElection.leaseSeconds) }}
{{- fail "operator.leaderElection.renewSeconds must be shorter than leaseSeconds" }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) }}
{{- fail "metrics.port and health.port must differ" }}
{{- end }}
{{- end }}

{{/*
RBAC rules for the namespaced resources the operator touches (shared by the ClusterRole in cluster scope and by
each Role in namespaced scope). Least privilege:
- no secrets (stage Jobs only reference them in env.valueFrom), no pods/exec, no pod create, no Job update/patch
  (the operator never rewrites a Job's spec; Kueue owns spec.suspend).
- no configmaps: a stage's config travels in its Job (a pod-template annotation, projected by a downwardAPI
  volume). The chart's optional Grafana dashboard ConfigMap is created by Helm, not by the operator.
- <resource>/finalizers update: needed by the OwnerReferencesPermissionEnforcement admission plugin to set
  blockOwnerDeletion on Jobs owned by a run, and on runs owned by a schedule.
*/}}
{{- define "synpo-operator.namespacedRules" -}}
- apiGroups: ["synpo.dev"]
  resources: ["synporuns"]
  verbs: ["get", "list", "watch", "patch", "update", "create", "delete"]
- apiGroups: ["synpo.dev"]
  resources: ["synposchedules"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["synpo.dev"]
  resources: ["synporuns/status", "synposchedules/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["synpo.dev"]
  resources: ["synporuns/finalizers", "synposchedules/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  # patch: only to fail a stuck stage's Job (an annotation and activeDeadlineSeconds; never spec.suspend)
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
{{- if .Values.jobset.enabled }}
- apiGroups: ["jobset.x-k8s.io"]
  resources: ["jobsets"]
  verbs: ["get", "list", "watch", "create", "delete"]
{{- end }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Kueue's Workloads of queued stage Jobs: their message says why a stage waits (read-only, watched; absent API:
# ignored)
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  # list/watch: the Job controller's FailedCreate Events say why a stage has no pods (a stuck stage)
  verbs: ["create", "patch", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Cluster-scoped reads kopf needs at startup and while running: CRDs (resource discovery) and namespace names
(namespace scanning; without them kopf falls back to the configured names and logs a warning).
*/}}
{{- define "synpo-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
