{{/*
Names and labels.
*/}}
{{- define "phx-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "phx-gateway.fullname" -}}
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

{{- define "phx-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "phx-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "phx-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "phx-gateway.labels" -}}
helm.sh/chart: {{ include "phx-gateway.chart" . }}
{{ include "phx-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ include "phx-gateway.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: phx-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "phx-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "phx-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "phx-gateway.adminServiceName" -}}
{{- printf "%s-admin" (include "phx-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "phx-gateway.configMapName" -}}
{{- printf "%s-config" (include "phx-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "phx-gateway.secretName" -}}
{{- include "phx-gateway.fullname" . }}
{{- end }}

{{/*
Image.
*/}}
{{- define "phx-gateway.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "phx-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "phx-gateway.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
Secret settings: values key -> environment variable of the gateway. The Redis URLs are
secrets because they may carry credentials (user:password@).
*/}}
{{- define "phx-gateway.secretEnvNames" -}}
redisUrl: PHX_GATEWAY__REDIS__URL
redisClusterUrls: PHX_GATEWAY__REDIS__CLUSTER_URLS
redisSentinelUrls: PHX_GATEWAY__REDIS__SENTINEL_URLS
redisPassword: PHX_GATEWAY__REDIS__PASSWORD
apiKey: PHX_GATEWAY__API__KEY
secretKeyBase: PHX_GATEWAY__AUTH__SECRET_KEY_BASE
jwtSecret: PHX_GATEWAY__AUTH__JWT_SECRET
{{- end }}

{{/*
"true" when the chart must create its own Secret (some entry has a value and no
existingSecret).
*/}}
{{- define "phx-gateway.createSecret" -}}
{{- $create := false }}
{{- range $name, $env := include "phx-gateway.secretEnvNames" . | fromYaml }}
{{- $entry := index $.Values.secrets $name }}
{{- if and (not $entry.existingSecret) $entry.value }}
{{- $create = true }}
{{- end }}
{{- end }}
{{- if $create }}true{{ end }}
{{- end }}

{{/*
The Redis topologies configured, comma-separated, by their secrets entry: redisUrl (one
endpoint), redisClusterUrls (a Redis Cluster), redisSentinelUrls (a primary found through
Sentinel). The gateway accepts one; "phx-gateway.validate" refuses more.
*/}}
{{- define "phx-gateway.redisModes" -}}
{{- $modes := list }}
{{- range $name := list "redisUrl" "redisClusterUrls" "redisSentinelUrls" }}
{{- $entry := index $.Values.secrets $name | default dict }}
{{- if or $entry.existingSecret $entry.value }}
{{- $modes = append $modes $name }}
{{- end }}
{{- end }}
{{- join "," $modes }}
{{- end }}

{{/*
"true" when the pods are cluster nodes (some Redis topology is configured).
*/}}
{{- define "phx-gateway.redisEnabled" -}}
{{- if include "phx-gateway.redisModes" . }}true{{ end }}
{{- end }}

{{/*
Drain and termination timing.
*/}}
{{- define "phx-gateway.terminationGracePeriodSeconds" -}}
{{- $d := .Values.drain }}
{{- $pre := ternary 0 (int $d.preStopSeconds) (eq $d.preStopHook "none") }}
{{- add $pre (int $d.seconds) (int $d.extraGraceSeconds) }}
{{- end }}

{{/*
Redis CA file path inside the container.
*/}}
{{- define "phx-gateway.redisCaDir" -}}/etc/ssl/phx-gateway{{- end }}
{{- define "phx-gateway.redisCaFile" -}}{{ include "phx-gateway.redisCaDir" . }}/redis-ca.crt{{- end }}

{{/*
PromQL label matchers for this release's series (as scraped by the chart's ServiceMonitor).
*/}}
{{- define "phx-gateway.metricSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q, namespace=%q" (include "phx-gateway.adminServiceName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
One TOML value (string, number, boolean, or array of those). Numbers go through toJson so
that large integers are not printed in exponent notation.
*/}}
{{- define "phx-gateway.tomlValue" -}}
{{- if kindIs "string" . }}
{{- toJson . }}
{{- else if kindIs "bool" . }}
{{- ternary "true" "false" . }}
{{- else if kindIs "slice" . }}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (include "phx-gateway.tomlValue" .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "map" . }}
{{- fail "phx-gateway: nested tables are not supported in config values; use extraConfigToml" }}
{{- else }}
{{- toJson . }}
{{- end }}
{{- end }}

{{/*
Checks that span several values (the schema checks each value on its own).
*/}}
{{- define "phx-gateway.validate" -}}
{{- $ca := .Values.redis.tls.ca }}
{{- if and $ca.secretName $ca.configMapName }}
{{- fail "redis.tls.ca: set secretName or configMapName, not both" }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" }}
{{- end }}
{{- $hpa := .Values.autoscaling }}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) }}
{{- fail "autoscaling: minReplicas is greater than maxReplicas" }}
{{- end }}
{{- if and $hpa.enabled (kindIs "invalid" $hpa.targetCPUUtilizationPercentage) (kindIs "invalid" $hpa.targetMemoryUtilizationPercentage) (not $hpa.sockets.enabled) }}
{{- fail "autoscaling: no metric (set targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or sockets.enabled)" }}
{{- end }}
{{- $modes := include "phx-gateway.redisModes" . }}
{{- if contains "," $modes }}
{{- fail (printf "secrets: set only one of redisUrl (one endpoint), redisClusterUrls (Redis Cluster) and redisSentinelUrls (Sentinel); set: %s" (replace "," ", " $modes)) }}
{{- end }}
{{- $redis := .Values.config.redis | default dict }}
{{- if and (eq $modes "redisSentinelUrls") (not (trim (toString ($redis.sentinel_master | default "")))) }}
{{- fail "secrets.redisSentinelUrls needs config.redis.sentinel_master (the name under which the Sentinels monitor the master)" }}
{{- end }}
{{- if and (hasKey $redis "heartbeat_ms") (hasKey $redis "down_ms") }}
{{- if lt (int $redis.down_ms) (mul 2 (int $redis.heartbeat_ms)) }}
{{- fail "config.redis.down_ms must be at least 2 × config.redis.heartbeat_ms" }}
{{- end }}
{{- end }}
{{- end }}
