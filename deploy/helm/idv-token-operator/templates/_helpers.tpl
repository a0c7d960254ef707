{{/* The chart's name, as the app.kubernetes.io/name label. */}}
{{- define "idv-token-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The objects' name: the release name when it contains the chart's name (so `helm install
idv-token-operator` gives the names deploy/ uses), else <release>-<chart>.
*/}}
{{- define "idv-token-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "idv-token-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "idv-token-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "idv-token-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the existing ServiceAccount to run as (serviceAccount.create is false)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: fixed for a release's lifetime (a Deployment's selector is immutable). */}}
{{- define "idv-token-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "idv-token-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object: the selector labels plus Helm's bookkeeping. */}}
{{- define "idv-token-operator.labels" -}}
{{ include "idv-token-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* The image: repository, then :tag (default appVersion) and/or @digest. */}}
{{- define "idv-token-operator.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- if .Values.image.tag -}}
{{- printf "%s:%s@%s" .Values.image.repository .Values.image.tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- end -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The CA bundle source (configMap or secret), or nothing. Both at once is an error. */}}
{{- define "idv-token-operator.caBundle" -}}
{{- $cm := .Values.caBundle.configMap -}}
{{- $secret := .Values.caBundle.secret -}}
{{- if and $cm.name $secret.name -}}
{{- fail "caBundle: set configMap.name or secret.name, not both" -}}
{{- else if $cm.name -}}
configMap:
  name: {{ $cm.name }}
  items:
    - {key: {{ $cm.key | quote }}, path: ca.crt}
{{- else if $secret.name -}}
secret:
  secretName: {{ $secret.name }}
  items:
    - {key: {{ $secret.key | quote }}, path: ca.crt}
{{- end -}}
{{- end -}}

{{/*
The operator's rules, the same cluster-wide (ClusterRole) and per namespace (Role). Each says
why it is there, as deploy/rbac.yaml does.
*/}}
{{- define "idv-token-operator.operatorRules" -}}
# Read the IdvClients it serves; watch them to react to changes.
- apiGroups: ["idv-token-operator.dev"]
  resources: ["idvclients"]
  verbs: ["get", "list", "watch"]
# Report Ready, expiry and key id in each IdvClient's status (server-side apply = patch).
- apiGroups: ["idv-token-operator.dev"]
  resources: ["idvclients/status"]
  verbs: ["get", "patch", "update"]
# Token Secrets carry an owner reference with blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin allows only with this right.
- apiGroups: ["idv-token-operator.dev"]
  resources: ["idvclients/finalizers"]
  verbs: ["update"]
# get: read the credential Secret by name and check a token Secret's owner before writing.
# list/watch: cache its own token Secrets and labelled credential Secrets (label-selected).
# create/patch: write token Secrets. delete: remove a token Secret its IdvClient owns after
# spec.secret.name changed.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Events on IdvClients (events.k8s.io/v1; created, never updated).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
