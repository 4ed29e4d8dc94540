{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "agentfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the chart name is not repeated when the release already holds it. */}}
{{- define "agentfleet.fullname" -}}
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

{{- define "agentfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. Call with (dict "root" $ "component" "dispatcher"). */}}
{{- define "agentfleet.labels" -}}
helm.sh/chart: {{ include "agentfleet.chart" .root }}
{{ include "agentfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: agentfleet
{{- end }}

{{/* Selector labels; a worker group adds its name. Call with (dict "root" $ "component" C ["group" G]). */}}
{{- define "agentfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentfleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with .group }}
agentfleet.io/worker-group: {{ . }}
{{- end }}
{{- end }}

{{- define "agentfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agentfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "agentfleet.configMapName" -}}
{{- printf "%s-config" (include "agentfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agentfleet.amqpPrefix" -}}
{{- (.Values.config.amqp | default dict).prefix | default "agentfleet" }}
{{- end }}

{{/* dispatcher.shutdown_grace_secs of the configuration (default 15). */}}
{{- define "agentfleet.dispatcherGraceSecs" -}}
{{- (.Values.config.dispatcher | default dict).shutdown_grace_secs | default 15 | int }}
{{- end }}

{{/* worker.shutdown_grace_secs of the configuration (default 30). */}}
{{- define "agentfleet.shutdownGraceSecs" -}}
{{- (.Values.config.worker | default dict).shutdown_grace_secs | default 30 | int }}
{{- end }}

{{/*
A worker group with workerDefaults filled in, as YAML (use with fromYaml).
Call with (dict "root" $ "group" $group).
*/}}
{{- define "agentfleet.workerGroup" -}}
{{- $group := mustMergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy .group) }}
{{- toYaml $group }}
{{- end }}

{{/*
The agents a worker group serves, comma-separated and sorted, with "*" expanded to every
configured agent. Fails on an agent the configuration does not define.
Call with (dict "root" $ "group" $group).
*/}}
{{- define "agentfleet.groupAgents" -}}
{{- $configured := keys .root.Values.config.agents | sortAlpha }}
{{- $agents := list }}
{{- range .group.agents }}
{{- if eq . "*" }}
{{- $agents = concat $agents $configured }}
{{- else if has . $configured }}
{{- $agents = append $agents . }}
{{- else }}
{{- fail (printf "workerGroups[%s].agents: unknown agent %q (config.agents has %s)" $.group.name . (join ", " $configured)) }}
{{- end }}
{{- end }}
{{- $agents | uniq | sortAlpha | join "," }}
{{- end }}

{{/* Name of a worker group's objects. Call with (dict "root" $ "group" $group). */}}
{{- define "agentfleet.workerName" -}}
{{- printf "%s-worker-%s" (include "agentfleet.fullname" .root) .group.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Environment shared by the dispatcher and the workers: the URLs, from the connection Secret. */}}
{{- define "agentfleet.connectionEnv" -}}
{{- /* A cluster's nodes, comma-separated, under amqpUrlsKey; else one node under amqpUrlKey. */ -}}
{{- if .Values.secrets.connection.amqpUrlsKey -}}
- name: AGENTFLEET__AMQP__URLS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.connection.name }}
      key: {{ .Values.secrets.connection.amqpUrlsKey }}
{{- else -}}
- name: AGENTFLEET__AMQP__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.connection.name }}
      key: {{ .Values.secrets.connection.amqpUrlKey }}
{{- end }}
{{- if .Values.secrets.connection.redisSentinelUrlsKey }}
- name: AGENTFLEET__REDIS__SENTINEL__URLS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.connection.name }}
      key: {{ .Values.secrets.connection.redisSentinelUrlsKey }}
{{- with .Values.secrets.connection.redisSentinelPasswordKey }}
- name: AGENTFLEET__REDIS__SENTINEL__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.secrets.connection.name }}
      key: {{ . }}
{{- end }}
{{- else if .Values.secrets.connection.redisClusterNodesKey }}
- name: AGENTFLEET__REDIS__CLUSTER__NODES
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.connection.name }}
      key: {{ .Values.secrets.connection.redisClusterNodesKey }}
{{- else }}
- name: AGENTFLEET__REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.connection.name }}
      key: {{ .Values.secrets.connection.redisUrlKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "agentfleet.configVolume" -}}
- name: config
  configMap:
    name: {{ include "agentfleet.configMapName" . }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "agentfleet.configVolumeMounts" -}}
- name: config
  mountPath: /etc/agentfleet
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}
