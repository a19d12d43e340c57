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

{{/*
Secret holding WEBHOOK_SECRET_ENCRYPTION_KEY, REDIS_PASSWORD, REDIS_URL and, with
Sentinel, REDIS_SENTINEL_PASSWORD.
*/}}
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

{{- define "cycles-events.secretKey.redisSentinelPassword" -}}
{{- if .Values.existingSecret.name -}}{{ .Values.existingSecret.redisSentinelPasswordKey }}{{- else -}}REDIS_SENTINEL_PASSWORD{{- end -}}
{{- end -}}

{{/* "true" when Redis is reached through Sentinel (master and nodes set), else empty. */}}
{{- define "cycles-events.sentinel" -}}
{{- if and .Values.redis.sentinel.master .Values.redis.sentinel.nodes -}}true{{- end -}}
{{- end -}}

{{/* Where the private CA of redis.tls is mounted; REDIS_TLS_CA_FILE names the file. */}}
{{- define "cycles-events.redisCaDir" -}}/etc/cycles-events/redis-ca{{- end -}}

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
{{- $sentinel := .Values.redis.sentinel -}}
{{- if and $sentinel.master (not $sentinel.nodes) -}}
{{- fail "redis.sentinel.master is set but redis.sentinel.nodes is empty: Sentinel needs both (or neither)" -}}
{{- end -}}
{{- if and $sentinel.nodes (not $sentinel.master) -}}
{{- fail "redis.sentinel.nodes is set but redis.sentinel.master is empty: Sentinel needs both (or neither)" -}}
{{- end -}}
{{- if and $sentinel.password (not $sentinel.master) -}}
{{- fail "redis.sentinel.password is set but Sentinel is not (redis.sentinel.master and redis.sentinel.nodes)" -}}
{{- end -}}
{{- if and $sentinel.master .Values.redis.url -}}
{{- fail "redis.url and redis.sentinel are exclusive: with Sentinel the daemon ignores REDIS_URL (give the password as redis.password)" -}}
{{- end -}}
{{- $tls := .Values.redis.tls -}}
{{- if and $tls.caSecret.name $tls.caConfigMap.name -}}
{{- fail "redis.tls: set caSecret.name or caConfigMap.name, not both" -}}
{{- end -}}
{{- if and (or $tls.caSecret.name $tls.caConfigMap.name) (not $tls.enabled) -}}
{{- fail "redis.tls.caSecret / redis.tls.caConfigMap need redis.tls.enabled: true" -}}
{{- end -}}
{{- if and (kindIs "bool" .Values.config.webhookSecretAllowPlaintext) (not .Values.config.webhookSecretAllowPlaintext) (not .Values.webhookSecretEncryptionKey) (not .Values.existingSecret.name) -}}
{{- fail "config.webhookSecretAllowPlaintext is false but webhookSecretEncryptionKey is empty: the daemon would refuse to start" -}}
{{- end -}}
{{- end -}}
