{{/*
gateway.toml, rendered from .Values.config, .Values.routes and .Values.extraConfigToml.
Listener addresses, ports, the drain period, the Redis CA path and secrets are environment
variables of the container (see deployment.yaml), so that they always agree with the probes,
Services and volumes, and win over the image's own ENV defaults.
*/}}
{{- define "phx-gateway.gatewayToml" -}}
# phx-gateway configuration rendered by the {{ include "phx-gateway.chart" . }} Helm chart
# (release {{ .Release.Name }}). Edit the chart values, not this file. Keys: docs/configuration.md.
# Set as environment variables by the chart: http.host, http.port, admin.host, admin.port,
# shutdown.drain_ms, demo.enabled, redis.tls_ca_file and the secrets (redis.url,
# redis.cluster_urls, redis.sentinel_urls, redis.password, api.key, auth.secret_key_base,
# auth.jwt_secret).
{{- range $section, $settings := .Values.config }}
{{- if not (kindIs "map" $settings) }}
{{- fail (printf "config.%s must be a map of settings" $section) }}
{{- end }}

[{{ $section }}]
{{- range $key, $value := $settings }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "phx-gateway.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- range .Values.routes }}

[[routes]]
{{- if not .topic }}
{{- fail "routes: every route needs a topic" }}
{{- end }}
topic = {{ include "phx-gateway.tomlValue" .topic }}
{{- range $key, $value := omit . "topic" }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "phx-gateway.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.extraConfigToml }}

# extraConfigToml
{{ . }}
{{- end }}
{{- end }}
