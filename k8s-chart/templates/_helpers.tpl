{{/* Names and labels. */}}

{{- define "apirouter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apirouter.fullname" -}}
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

{{- define "apirouter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apirouter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apirouter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "apirouter.labels" -}}
helm.sh/chart: {{ include "apirouter.chart" . }}
{{ include "apirouter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "apirouter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "apirouter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret the gateway reads its keys from: the chart's or an existing one. */}}
{{- define "apirouter.secretName" -}}
{{- default (include "apirouter.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* Name of the ConfigMap holding the configuration file. */}}
{{- define "apirouter.configMapName" -}}
{{- default (include "apirouter.fullname" .) .Values.config.existingConfigMap }}
{{- end }}

{{/* The image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "apirouter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* Name of the Redis the chart deploys (redis.deploy.enabled), within 63 characters. */}}
{{- define "apirouter.redisName" -}}
{{- printf "%s-redis" (include "apirouter.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* The deployed Redis's pod labels: another name, so the gateway's selector skips it. */}}
{{- define "apirouter.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "apirouter.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The gateway's API_GATEWAY_REDIS_URL: redis.url, or the deployed Redis; empty: off. */}}
{{- define "apirouter.redisUrl" -}}
{{- if .Values.redis.deploy.enabled }}
{{- if .Values.redis.url }}
{{- fail "set either redis.url (an existing Redis) or redis.deploy.enabled, not both" }}
{{- end }}
{{- printf "redis://%s:6379/0" (include "apirouter.redisName" .) }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/* Path prefix of every route. */}}
{{- define "apirouter.basePath" -}}
{{- printf "/api/v1/%s/apirouter" (required "env (API_GATEWAY_ENV) must be set" .Values.env | toString) }}
{{- end }}

{{/*
A number as an environment variable's text. YAML numbers reach templates as floats, which
print large whole values in exponent form (3.3554432e+07); whole ones are printed as integers.
*/}}
{{- define "apirouter.number" -}}
{{- if kindIs "string" . }}
{{- . }}
{{- else if eq (float64 .) (float64 (int64 .)) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* Seconds Kubernetes waits between the pod's deletion and SIGKILL. */}}
{{- define "apirouter.terminationGracePeriodSeconds" -}}
{{- $needed := add (int .Values.shutdownGrace) (int .Values.preStopSleepSeconds) }}
{{- if .Values.terminationGracePeriodSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + shutdownGrace (%v), or calls still running are killed" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- add $needed 15 }}
{{- end }}
{{- end }}

{{/*
The configuration file and the backend keys taken out of it, as JSON:
{"config": <file with every inline key replaced by the name of a variable>,
 "keys": {<variable name>: <key>}}.
The "apikey" of endpoint i becomes the variable APIROUTER_ENDPOINT_<i>_KEY (an "apikeyEnv"),
that of backend j of pool NAME under "deployments" APIROUTER_POOL_<NAME>_<j>_KEY, and the
"key" of client key i APIROUTER_CLIENT_<i>_KEY (a "keyEnv"); all are stored in the chart's
Secret, so no key is ever written into the ConfigMap.
*/}}
{{- define "apirouter.config" -}}
{{- $file := .Values.config.file }}
{{- $cfg := dict }}
{{- if kindIs "map" $file }}
{{- $cfg = deepCopy $file }}
{{- else if $file }}
{{- $cfg = fromJson (toString $file) }}
{{- if hasKey $cfg "Error" }}
{{- fail (printf "config.file is not valid JSON: %s" (get $cfg "Error")) }}
{{- end }}
{{- else }}
{{- with .Values.config.endpoints }}
{{- $_ := set $cfg "endpoints" (deepCopy .) }}
{{- end }}
{{- with .Values.config.deployments }}
{{- $_ := set $cfg "deployments" (deepCopy .) }}
{{- end }}
{{- with .Values.config.clientKeys }}
{{- $_ := set $cfg "clientKeys" (deepCopy .) }}
{{- end }}
{{- end }}
{{- $endpoints := get $cfg "endpoints" | default list }}
{{- $pools := get $cfg "deployments" | default dict }}
{{- if not (kindIs "slice" $endpoints) }}
{{- fail "the configuration's \"endpoints\" must be a list" }}
{{- end }}
{{- if not (kindIs "map" $pools) }}
{{- fail "the configuration's \"deployments\" must be a map of pools" }}
{{- end }}
{{- if and (not $endpoints) (not $pools) }}
{{- fail "the configuration has no endpoint and no deployments: set config.endpoints, config.deployments, config.file or config.existingConfigMap" }}
{{- end }}
{{- $keys := dict }}
{{- $out := list }}
{{- range $i, $ep := $endpoints }}
{{- if not (kindIs "map" $ep) }}
{{- fail (printf "config endpoint %d is not a map" $i) }}
{{- end }}
{{- if not (get $ep "uri") }}
{{- fail (printf "config endpoint %d has no uri" $i) }}
{{- end }}
{{- if hasKey $ep "apikey" }}
{{- if $.Values.existingSecret }}
{{- fail (printf "config endpoint %d has an inline apikey, but existingSecret is set: put the key in that Secret and name it with apikeyEnv" $i) }}
{{- end }}
{{- $var := printf "APIROUTER_ENDPOINT_%d_KEY" $i }}
{{- $_ := set $keys $var (toString (get $ep "apikey")) }}
{{- $ep = omit $ep "apikey" }}
{{- $_ := set $ep "apikeyEnv" $var }}
{{- end }}
{{- $out = append $out $ep }}
{{- end }}
{{- if hasKey $cfg "endpoints" }}
{{- $_ := set $cfg "endpoints" $out }}
{{- end }}
{{- $outPools := dict }}
{{- range $pool, $spec := $pools }}
{{- if not (and (kindIs "map" $spec) (kindIs "slice" (get $spec "backends"))) }}
{{- fail (printf "config deployments.%s needs a \"backends\" list" $pool) }}
{{- end }}
{{- $backends := list }}
{{- range $j, $backend := get $spec "backends" }}
{{- if not (kindIs "map" $backend) }}
{{- fail (printf "config deployments.%s.backends %d is not a map" $pool $j) }}
{{- end }}
{{- if hasKey $backend "apikey" }}
{{- if $.Values.existingSecret }}
{{- fail (printf "config deployments.%s.backends %d has an inline apikey, but existingSecret is set: put the key in that Secret and name it with apikeyEnv" $pool $j) }}
{{- end }}
{{- $var := printf "APIROUTER_POOL_%s_%d_KEY" (regexReplaceAll "[^A-Z0-9]" (upper $pool) "_") $j }}
{{- if hasKey $keys $var }}
{{- fail (printf "config deployments: two pools map to the variable %s; rename one, or use apikeyEnv" $var) }}
{{- end }}
{{- $_ := set $keys $var (toString (get $backend "apikey")) }}
{{- $backend = omit $backend "apikey" }}
{{- $_ := set $backend "apikeyEnv" $var }}
{{- end }}
{{- $backends = append $backends $backend }}
{{- end }}
{{- $_ := set $outPools $pool (merge (dict "backends" $backends) (omit $spec "backends")) }}
{{- end }}
{{- if $pools }}
{{- $_ := set $cfg "deployments" $outPools }}
{{- end }}
{{- if hasKey $cfg "clientKeys" }}
{{- $clients := get $cfg "clientKeys" }}
{{- if not (kindIs "slice" $clients) }}
{{- fail "the configuration's \"clientKeys\" must be a list" }}
{{- end }}
{{- $outClients := list }}
{{- range $i, $client := $clients }}
{{- if not (kindIs "map" $client) }}
{{- fail (printf "config clientKeys %d is not a map" $i) }}
{{- end }}
{{- if hasKey $client "key" }}
{{- if $.Values.existingSecret }}
{{- fail (printf "config clientKeys %d has an inline key, but existingSecret is set: put the key in that Secret and name it with keyEnv" $i) }}
{{- end }}
{{- $var := printf "APIROUTER_CLIENT_%d_KEY" $i }}
{{- $_ := set $keys $var (toString (get $client "key")) }}
{{- $client = omit $client "key" }}
{{- $_ := set $client "keyEnv" $var }}
{{- end }}
{{- $outClients = append $outClients $client }}
{{- end }}
{{- $_ := set $cfg "clientKeys" $outClients }}
{{- end }}
{{- toJson (dict "config" $cfg "keys" $keys) }}
{{- end }}

{{/*
Names in apiKeys: valid environment variable names, and none that the container's env
sets itself (the explicit env would silently win over the Secret's entry).
*/}}
{{- define "apirouter.checkApiKeys" -}}
{{- $setByChart := list "API_GATEWAY_KEY" "API_GATEWAY_CONFIG_FILE" "API_GATEWAY_NAME" "API_GATEWAY_ENV" "API_GATEWAY_METRICS_CINTERVAL" "API_GATEWAY_METRICS_CHISTORY" "API_GATEWAY_HOST" "API_GATEWAY_PORT" "API_GATEWAY_LOG_LEVEL" "API_GATEWAY_LOG_FORMAT" "API_GATEWAY_THREADS" "API_GATEWAY_CONNECTION_LIMIT" "API_GATEWAY_SHUTDOWN_GRACE" "API_GATEWAY_CONFIG_WATCH_SECONDS" "API_GATEWAY_METRICS_HISTORY_FILE" "API_GATEWAY_METRICS_HISTORY_FILE_MAX_BYTES" "API_GATEWAY_REDIS_URL" "API_GATEWAY_REDIS_PASSWORD" "API_GATEWAY_REDIS_PREFIX" "IMAGE_ID" "NODE_NAME" "POD_NAME" "POD_NAMESPACE" "POD_SVC_ACCOUNT" }}
{{- range $name, $_ := .Values.apiKeys }}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" $name) }}
{{- fail (printf "apiKeys: %q is not a valid environment variable name" $name) }}
{{- end }}
{{- if has $name $setByChart }}
{{- fail (printf "apiKeys: %q is set by the chart itself; use its own value" $name) }}
{{- end }}
{{- end }}
{{- end }}
