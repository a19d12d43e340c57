{{/* Chart name, overridable with nameOverride. */}}
{{- define "cycles-events.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name of the release's objects. Keep "cycles-events" in it: the alert
CyclesEventsTargetDown matches job=~".*cycles-events.*", and the ServiceMonitor's
job label is the Service's name.
*/}}
{{- define "cycles-events.fullname" -}}
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

{{- define "cycles-events.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cycles-events.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cycles-events.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cycles-events.labels" -}}
helm.sh/chart: {{ include "cycles-events.chart" . }}
{{ include "cycles-events.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: webhook-dispatcher
app.kubernetes.io/part-of: cycles
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "cycles-events.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cycles-events.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secret holding WEBHOOK_SECRET_ENCRYPTION_KEY, REDIS_PASSWORD and REDIS_URL. */}}
{{- define "cycles-events.secretName" -}}
{{- default (include "cycles-events.fullname" .) .Values.existingSecret.name -}}
{{- end -}}

{{- define "cycles-events.secretKey.encryptionKey" -}}
{{- if .Values.existingSecret.name -}}{{ .Values.existingSecret.encryptionKeyKey }}{{- else -}}WEBHOOK_SECRET_ENCRYPTION_KEY{{- end -}}
{{- end -}}

{{- define "cycles-events.secretKey.redisPassword" -}}
{{- if .Values.existingSecret.name -}}{{ .Values.existingSecret.redisPasswordKey }}{{- else -}}REDIS_PASSWORD{{- end -}}
{{- end -}}

{{- define "cycles-events.secretKey.redisUrl" -}}
{{- if .Values.existingSecret.name -}}{{ .Values.existingSecret.redisUrlKey }}{{- else -}}REDIS_URL{{- end -}}
{{- end -}}

{{- define "cycles-events.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Checks that a JSON schema cannot express. Included by the Deployment, so every
render runs them.
*/}}
{{- define "cycles-events.validate" -}}
{{- $drain := add .Values.config.shutdownGraceSeconds .Values.config.dispatchPendingTimeoutSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $drain) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than config.shutdownGraceSeconds + config.dispatchPendingTimeoutSeconds (%d): the kubelet would kill pods before in-flight deliveries finish" (int .Values.terminationGracePeriodSeconds) (int $drain)) -}}
{{- end -}}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) -}}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" -}}
{{- end -}}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) -}}
{{- fail "keda.minReplicaCount must not be greater than keda.maxReplicaCount" -}}
{{- end -}}
{{- if eq (int .Values.management.port) (int .Values.trafficPort) -}}
{{- fail "management.port and trafficPort must differ" -}}
{{- end -}}
{{- end -}}
